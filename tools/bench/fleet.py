"""`faceguard bench fleet`: several `faceguard serve` replicas on one PostgreSQL, measured as a
bank runs them: behind client-side round-robin, with one replica killed mid-run.

Starts a throwaway PostgreSQL (`tools.postgres`), the reference fraud sink, and `--replicas`
replicas on loopback ports sharing one template keyring, audit key and callback HMAC key.
`--clients` threads then run a mixed workload for `--seconds` through one channel that
round-robins over every replica and retries UNAVAILABLE: enrol a face under a new customer id,
verify and identify it, delete it. After each enrolment every replica is probed directly with
Identify of the enrolled face until it returns the new customer (visibility); after each
erasure every replica is probed once more (an erased customer must never come back). With
`--kill`, one replica gets SIGKILL halfway and is started again.

Printed: decisions answered, audited (the events table) and delivered at the sink, what was
lost between them and what the sink received twice; the median and worst visibility time (up
to the reply of the Identify that found the customer), the probes' median Identify time and the
share of replicas that returned the customer to the first probe; erasures matched after their
Delete answered; decisions per second, and the same against one replica unless
`--no-baseline`.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from sqlalchemy import create_engine, text

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.risk.callback import load_signing_key, write_signing_key
from service.store.audit_chain import KEYED_MARKER, ChainKey
from service.store.crypto import generate_keyring
from tools import postgres
from tools.bench.served import HOST, ServedProcess, free_port, sample_portraits
from tools.fraud_sink import sink_stats, start_sink, stored_event_ids

log = logging.getLogger(__name__)

VISIBLE_WITHIN_S = 10.0  # a probe gives up on a replica that has not seen an enrolment by then
DRAIN_S = 120.0  # longest wait for the outbox to reach the sink after the clients stop
RETRYING = {
    "loadBalancingPolicy": "round_robin",
    "methodConfig": [{
        "name": [{"service": "faceguard.v1.Enrollment"},
                 {"service": "faceguard.v1.FaceVerification"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}  # fmt: skip


def fleet_channel(addresses: list[str]) -> grpc.Channel:
    """One channel over every replica: gRPC's round_robin, UNAVAILABLE retried elsewhere."""
    target = "ipv4:" + ",".join(addresses)
    options = [("grpc.service_config", json.dumps(RETRYING)), ("grpc.enable_retries", 1)]
    return grpc.insecure_channel(target, options=options)


def replica_env(url: str, keys: Path, sink_port: int, clients: int) -> dict[str, str]:
    """What every replica shares: the database, the keys and the callback target. Rate limits
    are per client and per replica, so they are off here, and a call from each client thread
    may be in flight at once: every client of this program is one development caller."""
    concurrency = str(max(8, clients))  # client_concurrency may not exceed reserved_workers
    return {
        "FACEGUARD_STORAGE__DATABASE_URL": url,
        "FACEGUARD_STORAGE__KEY_FILE": str(keys / "template-keys.json"),
        "FACEGUARD_STORAGE__AUDIT_KEY_FILE": str(keys / "audit-chain.key"),
        "FACEGUARD_RISK__CALLBACK_TARGET": f"{HOST}:{sink_port}",
        "FACEGUARD_RISK__HMAC_KEY_FILE": str(keys / "callback-hmac.key"),
        "FACEGUARD_RISK__POLL_INTERVAL_S": "0.05",
        "FACEGUARD_RISK__BACKOFF_INITIAL_S": "0.05",
        "FACEGUARD_RISK__BACKOFF_MAX_S": "1.0",
        "FACEGUARD_RISK__DEAD_LETTER_AFTER": "40",
        "FACEGUARD_SECURITY__CLIENT_RATE": "0",
        "FACEGUARD_SECURITY__DEVICE_RATE": "0",
        "FACEGUARD_SERVER__RESERVED_WORKERS": concurrency,
        "FACEGUARD_SECURITY__CLIENT_CONCURRENCY": concurrency,
        "FACEGUARD_SECURITY__KIOSK_CONCURRENCY": concurrency,
        "FACEGUARD_VISION__PROCESSES": "0",
        "FACEGUARD_VISION__THREADS": "1",
    }


def write_fleet_keys(folder: Path) -> Path:
    """The keys every replica shares, made once before any replica starts (a replica making
    its own would key its templates or its audit rows differently from the others)."""
    folder.mkdir(mode=0o700, parents=True)
    generate_keyring().dump(folder / "template-keys.json")
    ChainKey.generate().dump(folder / "audit-chain.key")
    write_signing_key(folder / "callback-hmac.key")
    return folder


@dataclass
class Tally:
    """What the clients saw; one lock guards it."""

    answered: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    visibility_s: list[float] = field(default_factory=list)
    probe_latency_s: list[float] = field(default_factory=list)
    first_probes: Counter[bool] = field(default_factory=Counter)  # found by the first probe?
    not_visible: int = 0
    erasures_matched: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, kind: str, event_id: str) -> None:
        with self.lock:
            self.answered.add(event_id)
            self.calls[kind] += 1

    def probed(self, latency: float, first: bool, found: bool) -> None:
        with self.lock:
            self.probe_latency_s.append(latency)
            if first:
                self.first_probes[found] += 1

    def error(self, kind: str, exc: grpc.RpcError) -> None:
        with self.lock:
            self.errors[f"{kind}:{exc.code().name}"] += 1


class Fleet:
    """The replicas, each with its own data folder (index snapshot, checkpoints) and log."""

    def __init__(self, folder: Path, count: int, env: dict[str, str]) -> None:
        self.replicas = [
            ServedProcess(
                folder / f"replica-{i}", free_port(), env, log=folder / f"replica-{i}.log"
            )
            for i in range(count)
        ]
        self.channels = [grpc.insecure_channel(r.address) for r in self.replicas]
        self.up = [True] * count

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def start(self) -> None:
        """All at once, as a deployment does: the schema's owner is the first to take its lock."""
        for replica in self.replicas:
            replica.start()
        for index in range(len(self.replicas)):
            self.wait_ready(index)

    def wait_ready(self, index: int, timeout: float = 300.0) -> None:
        """Until replica `index` answers; a replica that exited names its log."""
        replica, deadline = self.replicas[index], time.monotonic() + timeout
        stub = enrollment_pb2_grpc.EnrollmentStub(self.channels[index])
        while True:
            try:
                stub.List(enrollment_pb2.ListRequest(page_size=1), timeout=2)
                return
            except grpc.RpcError:
                if replica.process is not None and replica.process.poll() is not None:
                    tail = replica.log.read_text()[-2000:] if replica.log else ""
                    raise RuntimeError(f"replica {index} exited at start:\n{tail}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def kill_and_restart(self, index: int) -> float:
        """SIGKILL one replica, start it again; seconds until it answers again."""
        self.up[index] = False
        started = time.monotonic()
        self.replicas[index].kill()
        self.replicas[index].start()
        self.wait_ready(index)
        self.up[index] = True
        return time.monotonic() - started

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        for replica in self.replicas:
            replica.stop()


def _identify(channel: grpc.Channel, face: bytes, device: str) -> verification_pb2.IdentifyResponse:
    request = verification_pb2.IdentifyRequest(
        image=common_pb2.Image(data=face), top_k=3, device_id=device
    )
    return verification_pb2_grpc.FaceVerificationStub(channel).Identify(request, timeout=30)


def _found(reply: verification_pb2.IdentifyResponse, customer_id: str) -> bool:
    return any(c.customer_id == customer_id for c in reply.candidates)


def _timed_identify(channel: grpc.Channel, face: bytes) -> tuple[Any, float, float]:
    """An Identify probe with its latency and the monotonic time its reply came."""
    sent = time.monotonic()
    reply = _identify(channel, face, "fleet-probe")
    done = time.monotonic()
    return reply, done - sent, done


def _probe_visible(fleet: Fleet, tally: Tally, face: bytes, customer_id: str, since: float) -> None:
    """Identify the face on every running replica at once, round after round, until each has
    returned `customer_id`. The enrolment's visibility is the slowest replica's time from the
    Enroll answer to the reply that returned it: an upper bound, since it includes that
    Identify call (whose median is printed beside it). A replica that returned it to the first
    probe had applied the enrolment before a search sent right after the answer; one still
    blind after VISIBLE_WITHIN_S counts as not visible."""
    pending = {i for i, up in enumerate(fleet.up) if up}
    worst, first = 0.0, True
    with ThreadPoolExecutor(max(1, len(pending))) as pool:
        while pending and time.monotonic() - since <= VISIBLE_WITHIN_S:
            probes = {i: pool.submit(_timed_identify, fleet.channels[i], face) for i in pending}
            for index, probe in probes.items():
                try:
                    reply, latency, done = probe.result()
                except grpc.RpcError as exc:  # killed under the probe: not measured for this face
                    tally.error("probe", exc)
                    pending.discard(index)
                    continue
                tally.answer("probe", reply.decision.event_id)
                found = _found(reply, customer_id)
                tally.probed(latency, first, found)
                if found:
                    worst = max(worst, done - since)
                    pending.discard(index)
            first = False
            if pending:
                time.sleep(0.05)
    with tally.lock:
        if pending:
            tally.not_visible += 1
        else:
            tally.visibility_s.append(worst)


def _probe_erased(fleet: Fleet, tally: Tally, face: bytes, customer_id: str) -> None:
    """After Delete answered, no running replica may return the erased customer."""
    for index, channel in enumerate(fleet.channels):
        if not fleet.up[index]:
            continue
        try:
            reply = _identify(channel, face, "fleet-probe")
        except grpc.RpcError as exc:
            tally.error("probe", exc)
            continue
        tally.answer("probe", reply.decision.event_id)
        if _found(reply, customer_id):
            with tally.lock:
                tally.erasures_matched += 1


def _consent() -> enrollment_pb2.Consent:
    consent = enrollment_pb2.Consent(purpose="benchmark", channel="bench", operator_id="bench")
    consent.given_at.GetCurrentTime()
    return consent


def _enrol(enrolment, tally: Tally, customer_id: str, face: bytes) -> bool:
    """Enrol through the fleet. A retried Enroll whose first try committed on a replica that was
    killed before answering gets ALREADY_EXISTS: the customer is there all the same."""
    request = enrollment_pb2.EnrollRequest(
        customer_id=customer_id, images=[common_pb2.Image(data=face)], consent=_consent()
    )
    try:
        tally.answer("enrol", enrolment.Enroll(request, timeout=60).decision.event_id)
        return True
    except grpc.RpcError as exc:
        tally.error("enrol", exc)
        return exc.code() == grpc.StatusCode.ALREADY_EXISTS


def _delete(enrolment, tally: Tally, customer_id: str) -> bool:
    """Delete through the fleet; NOT_FOUND after a retry means the first try erased it."""
    try:
        reply = enrolment.Delete(
            enrollment_pb2.DeleteRequest(
                customer_id=customer_id, reason="benchmark", operator_id="bench"
            ),
            timeout=60,
        )
        tally.answer("delete", reply.event_id)
        return True
    except grpc.RpcError as exc:
        tally.error("delete", exc)
        return exc.code() == grpc.StatusCode.NOT_FOUND


def _use(channel: grpc.Channel, tally: Tally, customer_id: str, face: bytes, n: int,
         rng: random.Random) -> None:  # fmt: skip
    """One to three verifies of the customer or identifies of the face, through the fleet."""
    kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
    for _ in range(rng.randint(1, 3)):
        kind = "verify" if rng.random() < 0.5 else "identify"
        try:
            if kind == "verify":
                reply = kiosk.Verify(verification_pb2.VerifyRequest(
                    customer_id=customer_id, frames=[common_pb2.Image(data=face)],
                    device_id=f"fleet-kiosk-{n}"), timeout=60)  # fmt: skip
            else:
                reply = _identify(channel, face, f"fleet-kiosk-{n}")
            tally.answer(kind, reply.decision.event_id)
        except grpc.RpcError as exc:
            tally.error(kind, exc)


def _client(n: int, fleet: Fleet, pool: queue.SimpleQueue[bytes], tally: Tally,
            until: float) -> None:  # fmt: skip
    """Take a face from the pool, enrol it, verify and identify it, delete it, give it back."""
    rng = random.Random(n)
    with fleet_channel(fleet.addresses) as channel:
        enrolment = enrollment_pb2_grpc.EnrollmentStub(channel)
        k = 0
        while time.monotonic() < until:
            try:
                face = pool.get(timeout=0.1)
            except queue.Empty:
                continue
            customer_id, k = f"fleet-{n}-{k}", k + 1
            try:
                if not _enrol(enrolment, tally, customer_id, face):
                    continue
                _probe_visible(fleet, tally, face, customer_id, time.monotonic())
                _use(channel, tally, customer_id, face, n, rng)
                while not _delete(enrolment, tally, customer_id):
                    time.sleep(0.2)
                _probe_erased(fleet, tally, face, customer_id)
            finally:
                pool.put(face)


def _distinct_faces(fleet: Fleet, portraits: list[bytes]) -> list[bytes]:
    """The portraits of distinct people: each is enrolled once and deleted again; the service
    refuses a second photo of one person (DUPLICATE_IDENTITY), and that photo is left out."""
    kept = []
    with fleet_channel(fleet.addresses) as channel:
        enrolment = enrollment_pb2_grpc.EnrollmentStub(channel)
        for i, face in enumerate(portraits):
            request = enrollment_pb2.EnrollRequest(
                customer_id=f"pool-{i}", images=[common_pb2.Image(data=face)], consent=_consent()
            )
            try:
                enrolment.Enroll(request, timeout=60)
            except grpc.RpcError:
                continue
            kept.append(face)
        for i in range(len(portraits)):
            try:
                enrolment.Delete(enrollment_pb2.DeleteRequest(customer_id=f"pool-{i}"), timeout=60)
            except grpc.RpcError:
                pass
    return kept


def _audited(url: str) -> set[str]:
    """The decisions and customer changes in the events table (the chain's own marker row is
    neither, and has no outbox row)."""
    engine = create_engine(url)
    query = text("SELECT event_id FROM events WHERE type != :marker")
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(query, {"marker": KEYED_MARKER})}
    finally:
        engine.dispose()


def _outbox_rows(url: str, event_ids: set[str], limit: int = 5) -> list[dict[str, Any]]:
    """The outbox state of a few undelivered events, to say why they were not delivered."""
    engine = create_engine(url)
    query = text(
        "SELECT e.type, o.status, o.attempts, o.last_error FROM events e "
        "LEFT JOIN outbox o ON o.event_id = e.event_id WHERE e.event_id = :id"
    )
    try:
        with engine.connect() as conn:
            rows = [conn.execute(query, {"id": i}).first() for i in sorted(event_ids)[:limit]]
    finally:
        engine.dispose()
    return [dict(row._mapping) for row in rows if row is not None]


def run_fleet(
    replicas: int, clients: int, seconds: float, kill: bool, portraits: list[bytes],
    bin_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """One measured run on a fresh PostgreSQL, sink and fleet; the figures of the docstring."""
    with tempfile.TemporaryDirectory(prefix="faceguard-fleet-") as tmp, \
            postgres.temporary_server(bin_dir) as url:  # fmt: skip
        folder = Path(tmp)
        keys = write_fleet_keys(folder / "keys")
        hmac = load_signing_key(keys / "callback-hmac.key", "k1")
        sink = start_sink(folder / "sink.db", {hmac.key_id: hmac})
        fleet = Fleet(folder, replicas, replica_env(url, keys, sink.port, clients))
        try:
            fleet.start()
            faces = _distinct_faces(fleet, portraits)
            pool: queue.SimpleQueue[bytes] = queue.SimpleQueue()
            for face in faces:
                pool.put(face)
            tally = Tally()
            started = time.monotonic()
            until = started + seconds
            threads = [
                threading.Thread(target=_client, args=(n, fleet, pool, tally, until))
                for n in range(clients)
            ]
            for thread in threads:
                thread.start()
            restart_s = None
            if kill:
                time.sleep(seconds / 2)
                victim = replicas // 2 if replicas > 1 else 0
                log.info("kill -9 of replica %d", victim)
                restart_s = fleet.kill_and_restart(victim)
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            audited = _audited(url)
            deadline = time.monotonic() + DRAIN_S
            while not audited <= stored_event_ids(folder / "sink.db"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # late redeliveries from other replicas' dispatchers
            delivered = stored_event_ids(folder / "sink.db")
            undelivered = _outbox_rows(url, audited - delivered)
        finally:
            fleet.stop()
            sink.stop()
        stats = sink_stats(folder / "sink.db")
    answered = tally.answered
    visibility = sorted(tally.visibility_s)
    return {
        "replicas": replicas,
        "clients": clients,
        "seconds": seconds,
        "kill": kill,
        "replica_restart_s": round(restart_s, 1) if restart_s is not None else None,
        "faces_in_pool": len(faces),
        "calls": dict(tally.calls),
        "errors": dict(tally.errors),
        "decisions_answered": len(answered),
        "decisions_audited": len(audited),
        "callbacks_delivered": len(delivered),
        "answered_not_audited": len(answered - audited),
        "audited_not_delivered": len(audited - delivered),
        "audited_not_answered": len(audited - answered),
        "undelivered_examples": undelivered,
        "duplicates_stored_at_sink": stats["stored"] - stats["distinct"],
        "redeliveries_at_sink": stats["duplicates"],
        "out_of_order_per_customer": stats["out_of_order"],
        "enrolments_probed": len(visibility),
        "visibility_worst_s": round(visibility[-1], 3) if visibility else None,
        "visibility_p50_s": round(visibility[len(visibility) // 2], 3) if visibility else None,
        "probe_identify_p50_s": round(statistics.median(tally.probe_latency_s), 3)
        if tally.probe_latency_s
        else None,
        "found_by_first_probe": round(
            tally.first_probes[True] / max(1, sum(tally.first_probes.values())), 3
        ),
        "not_visible_within_s": tally.not_visible,
        "visible_within_limit_s": VISIBLE_WITHIN_S,
        "erasures_matched_after_delete": tally.erasures_matched,
        "decisions_per_s": round(len(answered) / elapsed, 2),
        "enrol_to_delete_cycles_per_s": round(tally.calls["delete"] / elapsed, 3),
    }


def fleet_ok(result: dict[str, Any]) -> bool:
    """Nothing lost, nothing stored twice, no erased customer found."""
    return (
        result["answered_not_audited"] == 0
        and result["audited_not_delivered"] == 0
        and result["duplicates_stored_at_sink"] == 0
        and result["erasures_matched_after_delete"] == 0
    )


def run_bench_fleet(args: argparse.Namespace) -> int:
    bin_dir = postgres.server_bin()
    if bin_dir is None:
        log.error("no PostgreSQL server binaries (Debian package postgresql) on this machine")
        return 2
    portraits = sample_portraits()
    result = {"fleet": run_fleet(args.replicas, args.clients, args.seconds, args.kill,
                                 portraits, bin_dir)}  # fmt: skip
    if not args.no_baseline and args.replicas > 1:
        one = run_fleet(1, args.clients, args.seconds, False, portraits, bin_dir)
        result["one_replica"] = one
        result["throughput_ratio"] = round(
            result["fleet"]["decisions_per_s"] / max(one["decisions_per_s"], 1e-9), 2
        )
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print_json(json.dumps(result))
    return 0 if fleet_ok(result["fleet"]) else 1
