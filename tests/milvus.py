"""A throwaway Milvus standalone server for the tests: MilvusIndex is run against a real one.

The server is the PyPI `milvus` package (a real C++ Milvus 2.3 standalone, ~575 MB resident),
installed by `.ci/run` in a virtualenv of its own (`SERVER_VENV`; it pins protobuf<5, which the
service's protobuf>=5 excludes). Milvus listens on every interface and has no setting to bind
loopback, so it runs in a network namespace of its own (`unshare --net`, loopback only) where
nothing outside this machine, nor any other process here, can reach it; `tests/milvus_relay.py`,
started inside that namespace with a listening socket made on this machine's loopback, is its
only way in. Each server thus also keeps Milvus's fixed ports (etcd 2379, 9091, ...) to itself,
so several can run side by side.

Stopped by pid: the `milvus-server` wrapper ignores SIGTERM for a while and its
`milvus run standalone` child outlives it, so the child gets SIGTERM (then SIGKILL after a few
seconds) before the wrapper and the relay are killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_VENV = Path(
    os.environ.get("FACEGUARD_MILVUS_VENV", Path.home() / ".cache/faceguard/milvus-venv")
)
# Milvus's own client port inside the namespace.
PROXY_PORT = 19530
START_TIMEOUT_S = 120.0
_RELAY = Path(__file__).with_name("milvus_relay.py")


class ServerUnavailable(RuntimeError):
    """No Milvus server could be started here (no package, no namespaces, or it never came up)."""


def server_binary() -> Path | None:
    """The `milvus-server` launcher of the dedicated virtualenv, or None when absent."""
    binary = SERVER_VENV / "bin" / "milvus-server"
    return binary if binary.exists() else None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _kill(pid: int, grace_s: float) -> None:
    """SIGTERM, then SIGKILL when `pid` is still there after `grace_s`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass
class MilvusServer:
    """A running server: `uri` is its client address on this machine's loopback."""

    data_dir: Path
    port: int
    started_s: float
    _server: subprocess.Popen = field(repr=False)
    _relay: subprocess.Popen = field(repr=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server (its standalone child first) and the relay, by pid."""
        for child in _children(self._server.pid):
            _kill(child, grace_s=5.0)
        _kill(self._server.pid, grace_s=1.0)
        self._server.wait(timeout=10)
        self._relay.kill()
        self._relay.wait(timeout=10)


def _namespace_command(binary: Path, data_dir: Path) -> list[str]:
    """The server in a new network namespace with only loopback, brought up.

    Unprivileged, the namespace needs a user namespace too (`--map-root-user`). `exec` keeps
    the launcher's pid the one Popen knows.
    """
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "-r"]
    script = 'ip link set lo up && exec "$0" --data "$1"'
    return [*unshare, "sh", "-c", script, str(binary), str(data_dir)]


def _wait_healthy(uri: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Until a client call succeeds; ServerUnavailable when the server exits or never answers."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerUnavailable(f"milvus-server exited with {server.returncode}")
        try:
            client = MilvusClient(uri=uri, timeout=2)
            try:
                client.list_collections()
                return
            finally:
                client.close()
        except (MilvusException, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise ServerUnavailable(f"no answer from Milvus within {timeout_s:.0f} s: {last}")


def start(data_dir: Path, timeout_s: float = START_TIMEOUT_S) -> MilvusServer:
    """Start a server on `data_dir` (made or reused) and wait until it answers.

    Raises ServerUnavailable (after cleaning up) when it cannot be started here.
    """
    binary = server_binary()
    if binary is None:
        raise ServerUnavailable(f"no milvus-server in {SERVER_VENV} (.ci/run installs it)")
    try:
        import pymilvus  # noqa: F401  (the service's client: the `milvus` extra)
    except ImportError as exc:
        raise ServerUnavailable(f"pymilvus is not installed: {exc}") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with (data_dir / "server.out").open("ab") as out:
        server = subprocess.Popen(
            _namespace_command(binary, data_dir), stdout=out, stderr=subprocess.STDOUT
        )
    listener = socket.socket()
    relay = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        # The relay enters the server's namespace, so it needs the namespace to exist:
        # unshare has exec'd into the launcher once /proc/<pid>/exe is no longer unshare.
        _wait_namespace(server)
        relay = subprocess.Popen(
            ["nsenter", f"--net=/proc/{server.pid}/ns/net", "--", sys.executable, str(_RELAY),
             str(listener.fileno()), str(PROXY_PORT)],
            pass_fds=[listener.fileno()],
        )  # fmt: skip
        port = listener.getsockname()[1]
        _wait_healthy(f"http://127.0.0.1:{port}", server, timeout_s)
    except BaseException:
        for child in _children(server.pid):
            _kill(child, grace_s=1.0)
        server.kill()
        server.wait()
        if relay is not None:
            relay.kill()
            relay.wait()
        raise
    finally:
        listener.close()
    started = time.monotonic() - began
    log.info("Milvus started in %.1f s on %s (data %s)", started, port, data_dir)
    return MilvusServer(data_dir, port, started, server, relay)


def _wait_namespace(server: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerUnavailable(
                f"could not start Milvus in a network namespace (exit {server.returncode})"
            )
        try:
            if os.path.basename(os.readlink(f"/proc/{server.pid}/exe")) != "unshare":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise ServerUnavailable("the server's network namespace did not appear")


def main() -> None:
    """`python tests/milvus.py DATA_DIR`: a private server for `tools.bench.index_milvus`,
    its URI printed, until Ctrl+C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = start(Path(sys.argv[1]))
    # Blocked only now: the server's processes must not inherit a mask that blocks SIGTERM.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    print(server.uri, flush=True)  # the command's output: the server's address
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
