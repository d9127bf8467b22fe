"""The gallery store: transactions, erasure, id stability, the audit chain and key rotation.

Runs on real SQLite files, and the portable tests also on PostgreSQL: a temporary server from
the machine's binaries, or the throwaway database FACEGUARD_TEST_POSTGRES_URL names.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, delete, func, select, update

from service.domain import Consent
from service.errors import InvalidInput
from service.store import connection as connection_module
from service.store import customers as store_module
from service.store.audit_chain import InvalidEvent, NewEvent
from service.store.crypto import Keyring, KeyringError, TamperedError, generate_keyring
from service.store.customers import CustomerExists, CustomerNotFound, NewTemplate, Store
from service.store.tables import consent_table, customer_table, event_table, template_table
from tools import postgres

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "postgresql"]
DIM = 512
MODEL = "arcface-r100@1"
TABLES = (customer_table, template_table, consent_table, event_table)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gallery.db'}"
        return
    postgres_url = request.getfixturevalue("postgres_url")
    postgres.reset_database(postgres_url)
    yield postgres_url
    postgres.reset_database(postgres_url)


@pytest.fixture
def keyring() -> Keyring:
    return generate_keyring()


@pytest.fixture
def store(url: str, keyring: Keyring) -> Iterator[Store]:
    with Store(url, keyring) as opened:
        opened.create_schema()
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path, keyring: Keyring) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'gallery.db'}", keyring) as opened:
        opened.create_schema()
        yield opened


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def new_templates(*seeds: int, model: str = MODEL) -> list[NewTemplate]:
    return [NewTemplate(vector(seed), model, 80.0 + seed % 10) for seed in seeds]


def consent(purpose: str = "identity-verification") -> Consent:
    given = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    return Consent(purpose, given, "branch-kiosk", "op-17", given + timedelta(days=365))


def event(kind: str = "ENROLL", **payload: object) -> NewEvent:
    return NewEvent(kind, "OK", device_id="kiosk-3", payload=payload)


def enroll(store: Store, customer_id: str, *seeds: int) -> list[int]:
    return store.enroll(customer_id, new_templates(*seeds), consent(), event())


def count(url: str, table) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


def raw(url: str, *statements) -> None:
    """Run statements behind the store's back, as an attacker with database access would."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        engine.dispose()


def test_enroll_then_get(store: Store) -> None:
    ids = enroll(store, "cust-1", 1, 2)
    record = store.get_customer("cust-1")
    assert record is not None
    assert (record.customer_id, record.status, record.template_count) == ("cust-1", "ACTIVE", 2)
    assert record.embedder == MODEL
    assert record.created_at.tzinfo is not None and record.created_at == record.updated_at
    assert record.consent is not None
    assert (record.consent.purpose, record.consent.channel) == (
        "identity-verification",
        "branch-kiosk",
    )
    assert record.consent.given_at == consent().given_at
    assert record.consent.expires_at == consent().expires_at
    stored = store.templates_of("cust-1")
    assert [t.id for t in stored] == ids
    for template, seed in zip(stored, (1, 2), strict=True):
        np.testing.assert_array_equal(template.vector, vector(seed))
        assert (template.customer_id, template.model, template.quality) == (
            "cust-1",
            MODEL,
            80.0 + seed,
        )
    assert store.get_customer("nobody") is None
    assert store.templates_of("nobody") == []
    assert store.consent_expiry("cust-1") == (True, consent().expires_at)
    assert store.consent_expiry("nobody") == (False, None)


def test_list_customers_in_keyset_pages(store: Store) -> None:
    names = [f"cust-{i:02d}" for i in range(7)]
    for seed, name in enumerate(reversed(names)):
        store.enroll(name, new_templates(seed), consent(purpose=f"purpose-{name}"), event())
    pages, cursor = [], None
    while True:
        page, cursor = store.list_customers(page_size=3, after=cursor)
        pages.append([r.customer_id for r in page])
        if cursor is None:
            break
    assert pages == [names[0:3], names[3:6], names[6:7]]
    records, cursor = store.list_customers(7)  # exactly one full page: no next cursor
    assert cursor is None and all(r.template_count == 1 for r in records)
    assert [r.consent.purpose for r in records] == [f"purpose-{name}" for name in names]
    assert store.list_customers(3, after="cust-99") == ([], None)
    with pytest.raises(ValueError):
        store.list_customers(page_size=0)


def test_duplicate_enroll_raises_and_writes_nothing(store: Store, url: str) -> None:
    enroll(store, "cust-1", 1)
    before = {table.name: count(url, table) for table in TABLES}
    with pytest.raises(CustomerExists):
        enroll(store, "cust-1", 2, 3)
    after = {table.name: count(url, table) for table in TABLES}
    assert after == before
    assert len(store.templates_of("cust-1")) == 1
    assert store.verify_chain().ok


def test_concurrent_enrolments_of_one_id_leave_one_winner_and_customer_exists(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a has_customer check before enrolling cannot close: enrolments of one new id
    at once. The primary key decides; every loser gets CustomerExists (its IntegrityError on
    the insert, not an internal error) and leaves nothing behind."""
    insert_templates = store._insert_templates

    def held_open(*args: object) -> list[int]:
        time.sleep(0.2)  # the winner's transaction stays open while the others insert
        return insert_templates(*args)

    monkeypatch.setattr(store, "_insert_templates", held_open)
    workers = 4
    start = threading.Barrier(workers)
    results: list[object] = [None] * workers

    def attempt(slot: int) -> None:
        start.wait()
        try:
            results[slot] = enroll(store, "cust-race", slot + 1)
        except Exception as exc:  # the test asserts which
            results[slot] = exc

    threads = [threading.Thread(target=attempt, args=(slot,)) for slot in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [result for result in results if isinstance(result, list)]
    losers = [result for result in results if not isinstance(result, list)]
    assert len(winners) == 1, results
    assert len(losers) == workers - 1 and all(isinstance(r, CustomerExists) for r in losers)
    assert [t.id for t in store.templates_of("cust-race")] == winners[0]
    assert count(url, customer_table) == 1 and count(url, consent_table) == 1
    assert [e.type for e in store.events_of("cust-race")] == ["ENROLL"]
    assert store.verify_chain().ok


def test_add_and_replace_templates(store: Store) -> None:
    first = enroll(store, "cust-1", 1)
    created = store.get_customer("cust-1").updated_at
    added, removed = store.add_templates(
        "cust-1", new_templates(2, 3), False, event("UPDATE_TEMPLATES")
    )
    assert removed == [] and len(added) == 2 and min(added) > max(first)
    assert [t.id for t in store.templates_of("cust-1")] == first + added
    assert store.get_customer("cust-1").updated_at > created

    replaced, removed = store.add_templates(
        "cust-1", new_templates(4, model="arcface-r100@2"), True, event("UPDATE_TEMPLATES")
    )
    assert removed == first + added
    stored = store.templates_of("cust-1")
    assert [t.id for t in stored] == replaced
    np.testing.assert_array_equal(stored[0].vector, vector(4))
    assert store.get_customer("cust-1").embedder == "arcface-r100@2"
    payloads = [e.payload for e in store.events_of("cust-1")]
    assert payloads[-1] == {"template_ids_added": replaced, "template_ids_removed": removed}

    with pytest.raises(CustomerNotFound):
        store.add_templates("nobody", new_templates(5), False, event("UPDATE_TEMPLATES"))
    with pytest.raises(ValueError):
        store.add_templates("cust-1", [], True, event("UPDATE_TEMPLATES"))


def test_delete_erases_biometrics_and_consent_but_keeps_events(store: Store, url: str) -> None:
    ids = enroll(store, "cust-1", 1, 2)
    enroll(store, "cust-2", 3)
    removed = store.delete_customer("cust-1", event("DELETE", reason="customer-request"))
    assert removed == ids
    assert store.get_customer("cust-1") is None
    assert store.templates_of("cust-1") == []
    assert store.customer_of(ids) == {}
    assert [count(url, table) for table in TABLES] == [1, 1, 1, 3]  # cust-2's rows; all events
    history = store.events_of("cust-1")
    assert [(e.type, e.outcome) for e in history] == [("ENROLL", "OK"), ("DELETE", "OK")]
    assert history[1].payload == {"reason": "customer-request", "template_ids_removed": ids}
    assert store.verify_chain().ok
    with pytest.raises(CustomerNotFound):
        store.delete_customer("cust-1", event("DELETE"))


def test_template_ids_are_never_reused(store: Store) -> None:
    enroll(store, "cust-1", 1)
    highest = enroll(store, "cust-2", 2, 3)
    store.delete_customer("cust-2", event("DELETE"))  # frees the highest ids
    _, removed = store.add_templates("cust-1", new_templates(4), True, event("UPDATE_TEMPLATES"))
    again = enroll(store, "cust-2", 5)
    assert min(again) > max(highest + removed)
    assert store.template_ids().tolist() == sorted(store.template_ids().tolist())


def test_failure_mid_enrolment_leaves_nothing(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enroll(store, "cust-0", 9)
    real_seal = store_module.seal_vector
    calls = []

    def failing_seal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure on the second template")
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(store_module, "seal_vector", failing_seal)
    with pytest.raises(RuntimeError, match="injected"):
        enroll(store, "cust-1", 1, 2, 3)
    assert store.get_customer("cust-1") is None
    assert store.events_of("cust-1") == []
    assert [count(url, table) for table in TABLES] == [1, 1, 1, 1]
    monkeypatch.undo()
    enroll(store, "cust-1", 1, 2, 3)
    report = store.verify_chain()
    assert report.ok and report.rows == 2


CRASH_SCRIPT = """
import os, sys
from datetime import UTC, datetime
import numpy as np
from service.store import customers as store_module
from service.store.audit_chain import NewEvent
from service.store.crypto import Keyring
from service.store.customers import NewTemplate, Store
from service.domain import Consent

store = Store(sys.argv[1], Keyring.from_env())
real_seal, calls = store_module.seal_vector, []
def crash_on_second(*args):
    calls.append(1)
    if len(calls) == 2:
        os._exit(9)  # a killed process: no rollback, no cleanup
    return real_seal(*args)
store_module.seal_vector = crash_on_second
vectors = [NewTemplate(np.ones(8, np.float32), "m", 90.0)] * 3
consent = Consent("p", datetime.now(UTC), "c")
store.enroll("cust-1", vectors, consent, NewEvent("ENROLL", "OK"))
"""


def test_a_killed_process_leaves_nothing_partial(
    sqlite_store: Store, keyring: Keyring, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    env = {**os.environ, "FACEGUARD_TEMPLATE_KEYS": keyring.to_json(), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, url], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 9, result.stderr.decode()
    assert sqlite_store.get_customer("cust-1") is None
    assert [count(url, table) for table in TABLES] == [0, 0, 0, 0]
    enroll(sqlite_store, "cust-1", 1)  # the lock died with the process
    assert sqlite_store.verify_chain().ok


def test_chain_verifies_and_names_an_edited_payload(store: Store, url: str) -> None:
    for i in range(4):
        enroll(store, f"cust-{i}", i)
    store.record_event(NewEvent("VERIFY", "APPROVE", "kiosk-1", "cust-1", {"score": 0.71}))
    report = store.verify_chain()
    assert (report.ok, report.rows, report.first_broken) == (True, 5, None)
    assert len(report.head_hash) == 64

    raw(
        url,
        update(event_table)
        .where(event_table.c.id == 3)
        .values(payload='{"template_ids_added":[]}'),
    )
    report = store.verify_chain()
    assert (report.ok, report.rows, report.first_broken) == (False, 2, 3)
    assert "edited" in report.reason


def test_chain_names_the_row_after_a_deleted_one(store: Store, url: str) -> None:
    for i in range(4):
        enroll(store, f"cust-{i}", i)
    raw(url, delete(event_table).where(event_table.c.id == 2))
    report = store.verify_chain()
    assert (report.ok, report.first_broken) == (False, 3)
    assert "deleted, inserted or reordered" in report.reason


def test_chain_detects_a_deleted_first_row_and_reordering(store: Store, url: str) -> None:
    for i in range(4):
        enroll(store, f"cust-{i}", i)
    raw(
        url,
        update(event_table).where(event_table.c.id == 2).values(id=-2),
        update(event_table).where(event_table.c.id == 3).values(id=2),
        update(event_table).where(event_table.c.id == -2).values(id=3),
    )
    assert store.verify_chain().first_broken == 2
    raw(url, delete(event_table).where(event_table.c.id == 1))
    report = store.verify_chain()
    assert (report.first_broken, report.rows) == (2, 0)
    assert "chain start" in report.reason


def test_chain_detects_a_rewritten_link(store: Store, url: str) -> None:
    for i in range(3):
        enroll(store, f"cust-{i}", i)
    raw(url, update(event_table).where(event_table.c.id == 3).values(prev_hash="f" * 64))
    assert store.verify_chain().first_broken == 3


def test_events_refuse_biometric_payloads(store: Store) -> None:
    with pytest.raises(InvalidEvent, match="embeddings"):
        store.record_event(event("VERIFY", probe=vector(1).tolist()))
    with pytest.raises(InvalidEvent):
        store.record_event(event("VERIFY", probe=vector(1)))
    with pytest.raises(InvalidEvent):
        store.record_event(event("VERIFY", image=b"\xff\xd8\xff"))
    assert store.verify_chain().rows == 0
    event_id = store.record_event(event("VERIFY", score=np.float32(0.5), reasons=["NO_MATCH"]))
    assert store.verify_chain().rows == 1 and len(event_id) == 36


def test_event_must_match_the_customer_it_describes(store: Store) -> None:
    mismatched = NewEvent("ENROLL", "OK", customer_id="someone-else")
    with pytest.raises(ValueError, match="someone-else"):
        store.enroll("cust-1", new_templates(1), consent(), mismatched)
    assert store.get_customer("cust-1") is None


def test_iter_templates_ids_and_lookup(store: Store) -> None:
    a = enroll(store, "cust-a", 1, 2, 3)
    b = enroll(store, "cust-b", 4, 5)
    store.add_templates("cust-b", new_templates(6, 7, model="v2"), False, event("UPDATE_TEMPLATES"))
    batches = list(store.iter_templates(batch=2, model=MODEL))
    assert [len(ids) for ids, _, _ in batches] == [2, 2, 1]
    ids = np.concatenate([ids for ids, _, _ in batches])
    vectors = np.concatenate([v for _, v, _ in batches])
    owners = [c for _, _, names in batches for c in names]
    assert ids.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape == (5, DIM)
    assert ids.tolist() == a + b and owners == ["cust-a"] * 3 + ["cust-b"] * 2
    np.testing.assert_array_equal(vectors[3], vector(4))
    assert store.template_ids(model=MODEL).tolist() == a + b
    all_ids = store.template_ids()
    assert all_ids.dtype == np.int64 and len(all_ids) == 7
    assert store.customer_of(np.array([a[0], b[1], -1, 10**12])) == {a[0]: "cust-a", b[1]: "cust-b"}
    np.testing.assert_array_equal(store.vectors_of(np.array([b[1], a[0]])), vectors[[4, 0]])
    with pytest.raises(KeyError):
        store.vectors_of(np.array([10**12]))


def test_a_ciphertext_moved_to_another_customer_does_not_decrypt(store: Store, url: str) -> None:
    (a,) = enroll(store, "cust-a", 1)
    (b,) = enroll(store, "cust-b", 2)
    engine = create_engine(url)
    with engine.connect() as conn:
        stolen = conn.execute(
            select(template_table.c.ciphertext).where(template_table.c.id == a)
        ).scalar_one()
    engine.dispose()
    raw(url, update(template_table).where(template_table.c.id == b).values(ciphertext=stolen))
    with pytest.raises(TamperedError):
        store.templates_of("cust-b")


def test_rotate_keys_reencrypts_everything(store: Store, url: str, keyring: Keyring) -> None:
    seeds = {f"cust-{i}": (2 * i, 2 * i + 1) for i in range(5)}
    for customer_id, pair in seeds.items():
        enroll(store, customer_id, *pair)
    rotated = keyring.add_key()
    with pytest.raises(KeyringError, match="k1"):
        store.rotate_keys(Keyring({"k2": os.urandom(32)}, "k2"))
    assert store.rotate_keys(rotated, batch=3) == 10
    assert store.rotate_keys(rotated) == 0
    enroll(store, "cust-new", 99)  # new writes use the new active key

    with Store(url, only_key(rotated, "k2")) as reader:  # the old key is no longer needed
        for customer_id, pair in [*seeds.items(), ("cust-new", (99,))]:
            stored = reader.templates_of(customer_id)
            assert len(stored) == len(pair)
            for template, seed in zip(stored, pair, strict=True):
                np.testing.assert_array_equal(template.vector, vector(seed))
    report = store.verify_chain()
    assert report.ok and report.rows == 5 + 4 + 1  # enrolments, one event per batch, enrolment


def only_key(keyring: Keyring, key_id: str) -> Keyring:
    encoded = json.loads(keyring.to_json())["keys"][key_id]
    return Keyring.from_json(json.dumps({"active": key_id, "keys": {key_id: encoded}}))


def test_database_files_hold_no_plaintext_vectors(
    sqlite_store: Store, keyring: Keyring, tmp_path: Path
) -> None:
    for i in range(5):
        enroll(sqlite_store, f"cust-{i}", i)
    sqlite_store.add_templates("cust-0", new_templates(10), True, event("UPDATE_TEMPLATES"))
    sqlite_store.rotate_keys(keyring.add_key())
    files = sorted(tmp_path.glob("gallery.db*"))
    contents = b"".join(path.read_bytes() for path in files)
    assert b"cust-3" in contents  # the scan does see the stored rows (in the db or the WAL)
    for seed in (*range(5), 10):
        assert vector(seed).tobytes() not in contents
        assert vector(seed)[:8].tobytes() not in contents


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_store: Store, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "gallery.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with sqlite_store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_rejected_database_urls(keyring: Keyring) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        Store("sqlite://", keyring)
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://user@host/db", keyring)


def test_consent_and_template_inputs_are_validated() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        Consent("p", datetime(2025, 1, 1), "branch")
    with pytest.raises(InvalidInput, match="expires before"):
        Consent("p", datetime(2025, 1, 1, tzinfo=UTC), "c", None, datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        NewTemplate(np.array([np.nan], np.float32), MODEL, 1.0)
    with pytest.raises(ValueError):
        NewTemplate(vector(1), "", 1.0)


def test_concurrent_enrolment_keeps_one_valid_chain(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        try:
            for i in range(10):
                enroll(store, f"t{thread}-c{i}", thread * 100 + i)
                store.record_event(
                    NewEvent("VERIFY", "APPROVE", f"kiosk-{thread}", f"t{thread}-c{i}")
                )
        except BaseException as err:  # surfaced below: a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = store.verify_chain()
    assert report.ok and report.rows == 8 * 10 * 2
    ids = store.template_ids()
    assert len(ids) == 80 and len(set(ids.tolist())) == 80
    assert len(store.list_customers(page_size=100)[0]) == 80


def test_an_empty_database_is_not_taken_for_a_faceguard_one(tmp_path: Path, keyring: Keyring):
    """`faceguard audit verify|checkpoint` read only an existing store: a SQLite file that
    does not exist, or a database without the events table, is named as such."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    assert connection_module.sqlite_file(url) == tmp_path / "other.db"
    assert connection_module.sqlite_file("postgresql+psycopg://h/db") is None
    with Store(url, keyring) as empty:
        assert not empty.has_audit_events()
        empty.create_schema()
        assert empty.has_audit_events()
