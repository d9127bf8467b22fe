"""The fleet through its real interface: three `faceguard serve` replicas on one throwaway
PostgreSQL behind gRPC round-robin, four clients of mixed enrol/verify/identify/delete for 15 s,
one replica killed with SIGKILL halfway and started again (`tools.bench.fleet`, the short form
of `faceguard bench fleet`).

Skips only where the machine has no PostgreSQL server binaries (`.ci/run` installs them).
"""

from __future__ import annotations

import pytest

from tools import postgres
from tools.bench.fleet import run_fleet
from tools.bench.served import sample_portraits

# The time until every replica's Identify returns a new enrolment includes that Identify call
# (a full face pipeline, slow on a loaded 2-core test machine). The share of replicas that
# already return it to the first probe sent after Enroll answered: 1/3 when only the enrolling
# replica sees it (no following), 0.9 in `bench fleet` runs on this machine.
VISIBLE_BOUND_S = 5.0
FIRST_PROBE_SHARE = 0.6


@pytest.fixture(scope="module")
def fleet_run() -> dict:
    bin_dir = postgres.server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql) on this machine")
    return run_fleet(3, 4, 15.0, True, sample_portraits(), bin_dir)


def test_the_fleet_ran_a_mixed_load_through_a_kill(fleet_run: dict) -> None:
    assert fleet_run["replica_restart_s"] is not None
    for kind in ("enrol", "verify", "identify", "delete", "probe"):
        assert fleet_run["calls"].get(kind, 0) > 0, kind


def test_no_decision_is_lost_between_answer_audit_and_sink(fleet_run: dict) -> None:
    assert fleet_run["answered_not_audited"] == 0
    assert fleet_run["audited_not_delivered"] == 0, fleet_run["undelivered_examples"]
    assert fleet_run["callbacks_delivered"] >= fleet_run["decisions_answered"] > 0


def test_each_event_reaches_the_sink_once(fleet_run: dict) -> None:
    """Stored twice: never. Sent twice: only what was in flight at the SIGKILL (the killed
    replica's claims expire and another delivers them), not once per replica."""
    assert fleet_run["duplicates_stored_at_sink"] == 0
    assert fleet_run["redeliveries_at_sink"] <= 16
    assert fleet_run["out_of_order_per_customer"] == 0


def test_an_enrolment_is_visible_for_1_to_n_on_every_replica(fleet_run: dict) -> None:
    assert fleet_run["enrolments_probed"] > 0
    assert fleet_run["not_visible_within_s"] == 0
    assert fleet_run["visibility_worst_s"] <= VISIBLE_BOUND_S
    assert fleet_run["found_by_first_probe"] >= FIRST_PROBE_SHARE


def test_no_erased_customer_is_matched_after_delete_answered(fleet_run: dict) -> None:
    assert fleet_run["erasures_matched_after_delete"] == 0
