"""What replicas share through one database: the audit chain written by several stores at once
stays one verifiable order, and a velocity lockout made through one replica holds on another;
the two fleet benchmarks (`faceguard bench chain`, `faceguard bench follow`) run briefly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli.main import main
from service.store.audit_chain import ChainKey, NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store
from service.store.velocity import Limits, Velocity
from tools import postgres


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


@pytest.fixture
def stores(url: str) -> Iterator[list[Store]]:
    """Three replicas' stores on one database, sharing the bank's keyring and audit key."""
    keyring, chain_key = generate_keyring(), ChainKey.generate()
    opened = [Store(url, keyring, chain_key) for _ in range(3)]
    for store in opened:
        store.create_schema()
    yield opened
    for store in opened:
        store.close()


def decline(store: Store, customer: str, device: str) -> str:
    """A declined verify that counts against the customer and the device (velocity)."""
    payload = {"outcome": "DECLINE", "reason_codes": ["NO_MATCH"], "match_score": 0.1}
    event = NewEvent("VERIFY", "DECLINE", device_id=device, customer_id=customer, payload=payload)
    return store.record_event(event)


def test_three_stores_writing_at_once_leave_one_verifiable_chain(stores: list[Store]) -> None:
    failures: list[BaseException] = []

    def write(store: Store, thread: int) -> None:
        try:
            for i in range(15):
                decline(store, f"c-{thread}-{i}", f"k-{thread}")
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=write, args=(store, n * 10 + t))
        for n, store in enumerate(stores)
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    report = stores[1].verify_chain()
    assert report.ok, report.reason
    assert report.rows == 1 + 3 * 4 * 15  # the AUDIT_CHAIN_KEYED row, then every decision


def test_a_lockout_made_through_one_replica_holds_on_another(stores: list[Store]) -> None:
    limits = Limits(3, 600.0, 3, 600.0, 2, 600.0)
    through_a, through_b = Velocity(stores[0], limits), Velocity(stores[1], limits)
    for customer in ("c-1", "c-2", "c-3"):
        decline(stores[0], customer, "kiosk-7")
    assert through_a.device_locked("kiosk-7") and through_b.device_locked("kiosk-7")
    assert not through_b.device_locked("kiosk-8")


def test_bench_chain_prints_its_figures_and_refuses_sqlite(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`faceguard bench chain`, briefly: every figure printed, the chain verified after."""
    postgres.reset_database(postgres_url)
    args = ["bench", "chain", "--writers", "2", "--threads", "2", "--seconds", "0.3", "--json"]
    assert main([*args, "--url", postgres_url]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chain_ok"] and result["fleet"]["writers"] == 2
    assert result["fleet"]["decisions"] > 0 and result["uncontended"]["decisions"] > 0
    assert result["chain_rows"] == 1 + result["fleet"]["decisions"] + result["uncontended"][
        "decisions"]  # fmt: skip
    assert main([*args, "--url", f"sqlite:///{tmp_path / 'x.db'}"]) == 2


def test_bench_follow_prints_the_lag_of_every_change(capsys: pytest.CaptureFixture[str]) -> None:
    """`faceguard bench follow`, briefly, on SQLite (polling)."""
    assert main(["bench", "follow", "--changes", "6", "--poll-s", "0.02", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["enrolment"]["count"] == result["erasure"]["count"] == 3
    assert result["all"]["p99_ms"] >= result["all"]["p50_ms"] > 0
