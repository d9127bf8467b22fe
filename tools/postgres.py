"""A throwaway PostgreSQL server: the tests run the portable store code against it, and
`faceguard bench fleet` runs its replicas on it.

Uses the server binaries of the machine (Debian's `postgresql` package puts them in
/usr/lib/postgresql/<version>/bin; `.ci/run` installs it). The cluster lives in a temporary
folder, listens on a Unix socket only and is stopped at the end; nothing else is touched.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin() -> Path | None:
    """The folder holding initdb/pg_ctl, or None when no PostgreSQL server is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` account when we are root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def temporary_server(bin_dir: Path) -> Iterator[str]:
    """Start a fresh cluster; yields a SQLAlchemy URL (psycopg 3) to its `postgres` database."""
    with tempfile.TemporaryDirectory(prefix="faceguard-pg-") as tmp:
        data, socket_dir = Path(tmp) / "data", Path(tmp)
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(tmp, account.pw_uid, account.pw_gid)
        run = {"check": True, "capture_output": True}
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "faceguard",
                             "--auth=trust", "--no-sync"]), **run,
        )  # fmt: skip
        options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                             "-l", str(Path(tmp) / "server.log"), "start"]), **run,
        )  # fmt: skip
        try:
            yield f"postgresql+psycopg://faceguard@/postgres?host={socket_dir}"
        finally:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                 "stop"]), capture_output=True, check=False,
            )  # fmt: skip


def reset_database(url: str) -> None:
    """Empty the throwaway database: every table, the schema's version row included (dropping
    only the tables a module knows would leave a version row that claims they exist)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
