"""`faceguard bench service`: the service measured through its gRPC interface.

Starts `faceguard serve` as a separate process on a free port and a fresh data directory
(`tools.bench.served`: client and server do not share an interpreter), enrols single-face
portraits made from the sample photos, then measures:
- import: images per second through Enroll, `--workers` concurrent calls;
- verify: median latency with one client, and verifies per second with 8 concurrent clients,
  each with the CPU time of the server and its vision worker processes (CPU ms per verify
  alone; cores busy under the 8 clients);
- identify: the vector index alone, with synthetic face-like templates in galleries of the
  requested sizes (see `tools.bench.index`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.app.vision_pool import default_process_count
from service.config import load_settings
from tools.bench.index import run_index_bench
from tools.bench.served import (
    ServedProcess,
    enrol_portraits,
    free_port,
    sample_portraits,
    wait_ready,
)


def _verify_request(enrolled: dict[str, bytes], i: int) -> verification_pb2.VerifyRequest:
    customer_id = sorted(enrolled)[i % len(enrolled)]
    return verification_pb2.VerifyRequest(
        customer_id=customer_id, frames=[common_pb2.Image(data=enrolled[customer_id])],
        device_id="bench",
    )  # fmt: skip


def _verify_latency(stub, enrolled: dict[str, bytes], calls: int) -> float:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        stub.Verify(_verify_request(enrolled, i), timeout=60)
        samples.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(samples), 1)


def _verify_throughput(stub, enrolled: dict[str, bytes], clients: int, calls: int) -> float:
    def one(i: int) -> None:
        stub.Verify(_verify_request(enrolled, i), timeout=60)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(calls)))
    return round(calls / (time.perf_counter() - start), 1)


def _stat(pid: int) -> list[str]:
    """A process's /proc stat fields after its name (state, ppid, ..., utime, stime at 11-12)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the server and its vision worker processes have
    used so far, from Linux's /proc: what a verify costs the service, apart from the client
    sharing the machine. A worker that exits mid-run takes its time with it."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except OSError:  # a process that ended while being read
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_service(threads: int, calls: int) -> dict[str, Any]:
    portraits = sample_portraits()
    env = {"FACEGUARD_VISION__THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as data:
        with ServedProcess(Path(data), free_port(), env) as server:
            with grpc.insecure_channel(server.address) as channel:
                enrolment = enrollment_pb2_grpc.EnrollmentStub(channel)
                kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
                wait_ready(enrolment)
                enrolled, import_rate = enrol_portraits(enrolment, portraits, workers=4)
                _verify_latency(kiosk, enrolled, 3)  # warm-up
                cpu_before = _cpu_seconds(server.pid)
                latency = _verify_latency(kiosk, enrolled, calls)
                cpu_between, started = _cpu_seconds(server.pid), time.perf_counter()
                rate = _verify_throughput(kiosk, enrolled, 8, calls * 2)
                busy = (_cpu_seconds(server.pid) - cpu_between) / (time.perf_counter() - started)
                return {
                    "server_side_by_side_runs": threads,
                    "server_vision_processes": (
                        load_settings().vision.processes or default_process_count()
                    ),
                    "portraits": len(portraits),
                    "enrolled": len(enrolled),
                    "import_images_per_s": round(import_rate, 2),
                    "verify_median_ms_1_client": latency,
                    "server_cpu_ms_per_verify_1_client": round(
                        (cpu_between - cpu_before) * 1000.0 / calls, 1
                    ),
                    "verify_per_s_8_clients": rate,
                    "server_cores_busy_8_clients": round(busy, 2),
                }


def run_bench_service(args: argparse.Namespace) -> int:
    results = {"service": measure_service(args.threads, args.calls)}
    results["identify"] = run_index_bench(sizes=tuple(args.sizes))
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        Console().print_json(json.dumps(results))
    return 0
