"""The client commands as a user runs them, against a real service with the kiosk quality
gate: readable decisions and JSON with every field, quality refusals that say what was
measured against what, tables, exit statuses, the import's failure report and resume file.

The enrolment photos are LFW photos enlarged 2x (faces ~120 px, as a kiosk camera gives); the
150x150 originals (faces ~60 px) are what a web photo looks like to the kiosk gate.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import cv2
import pytest

from service.api.server import Running
from service.cli.main import main
from service.vision.quality import QualityPolicy
from tests.service_helpers import FACEGUARD, service_settings, with_sections

# LFW people whose enlarged photos pass the kiosk gate (checked with `faceguard analyze`).
ALICE, BOB = "Abdullah", "Aaron_Peirsol"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve) -> Running:
    settings = service_settings(tmp_path_factory.mktemp("data"))
    settings = settings.model_copy(update={"quality": QualityPolicy()})
    return serve(with_sections(settings, vision={"processes": 0}))


@pytest.fixture(scope="module")
def photos(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Enlarged photos of ALICE and BOB (4 each), and the originals under "<name>-small"."""
    out = tmp_path_factory.mktemp("photos")
    found: dict[str, list[Path]] = {}
    for name in (ALICE, BOB):
        originals = sorted((shared_data / "faces" / "lfw" / name).glob("*.jpg"))[:4]
        found[f"{name}-small"] = originals
        found[name] = []
        for path in originals:
            image = cv2.imread(str(path))
            big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            target = out / path.name
            cv2.imwrite(str(target), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
            found[name].append(target)
    return found


def cli(served: Running, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `faceguard ARGS --server ...` in this process: (exit status, stdout, stderr)."""
    code = main([*args, "--server", f"127.0.0.1:{served.port}"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_empty_gallery_lists_no_customers(served, capsys) -> None:
    code, out, _ = cli(served, capsys, "enroll", "list")
    assert code == 0 and out.strip() == "no customers"
    code, out, _ = cli(served, capsys, "enroll", "list", "--json")
    assert json.loads(out) == {"customers": [], "next_page_token": ""}


def test_a_web_photo_is_refused_with_measured_against_required(served, photos, capsys) -> None:
    small = photos[f"{ALICE}-small"]
    code, out, _ = cli(
        served, capsys, "enroll", "add", "--customer-id", "web", "--operator", "op",
        str(photos[ALICE][0]), str(small[1]), "--json",
    )  # fmt: skip
    assert code == 4
    error = json.loads(out)["error"]
    assert error["status"] == "FAILED_PRECONDITION" and error["reason"] == "LOW_QUALITY_SIZE"
    metadata = error["metadata"]
    assert metadata["image"] == "1" and error["file"] == str(small[1])
    assert metadata["min_face_px"] == "80" and 40 < float(metadata["face_px"]) < 80
    assert (
        f"face {float(metadata['face_px']):.0f} px, needs 80 (quality.min_face_px)"
        in (error["message"])
    )
    assert 'quality.profile = "id_photo"' in error["message"]
    code, _, err = cli(
        served, capsys, "enroll", "add", "--customer-id", "web", "--operator", "op", str(small[1])
    )
    assert code == 4 and "needs 80 (quality.min_face_px)" in err and str(small[1]) in err


def test_decisions_read_as_a_line_and_a_table_and_as_json_with_every_field(
    served, photos, capsys
) -> None:
    alice, bob = photos[ALICE], photos[BOB]
    code, out, _ = cli(
        served, capsys, "enroll", "add", "--customer-id", "alice", "--operator", "op",
        str(alice[0]), str(alice[1]),
    )  # fmt: skip
    assert code == 0 and out.startswith("APPROVE: enrolled")
    code, out, _ = cli(served, capsys, "verify", "--customer-id", "alice", str(alice[2]))
    assert code == 0, out
    first = out.splitlines()[0]
    assert first.startswith("APPROVE: alice matched at ") and "(threshold 0.5" in first
    assert "match" in out and "quality" in out and "rules fired" in out
    assert "{" not in out  # not a Python dict

    code, out, _ = cli(served, capsys, "verify", "--customer-id", "alice", str(alice[2]), "--json")
    decision = json.loads(out)["decision"]
    assert code == 0 and decision["outcome"] == "APPROVE"
    rules = decision["rules"]
    assert len(rules) >= 9 and all("fired" in r and "hard" in r for r in rules)
    assert {r["reason_code"] for r in rules if not r["fired"]} >= {"BLOCKLISTED", "VELOCITY"}
    assert decision["device_id"] == "" and "liveness" not in decision  # a message: presence

    code, out, _ = cli(served, capsys, "verify", "--customer-id", "alice", str(bob[1]))
    assert code == 1 and out.startswith("DECLINE: no match (best ")


def test_update_identify_and_check_liveness_commands(served, photos, capsys) -> None:
    alice = photos[ALICE]
    code, out, _ = cli(
        served, capsys, "enroll", "update", "--customer-id", "alice", "--operator", "op",
        str(alice[3]), "--json",
    )  # fmt: skip
    reply = json.loads(out)
    assert reply["customer"]["template_count"] == 3
    assert code == {"APPROVE": 0, "REVIEW": 3}[reply["decision"]["outcome"]]
    code, out, _ = cli(served, capsys, "identify", str(alice[2]))
    assert code == 0 and "candidates" in out and "alice" in out
    code, out, _ = cli(served, capsys, "check-liveness", str(alice[2]), "--json")
    decision = json.loads(out)["decision"]
    assert code in (0, 3) and decision["reason_codes"][0].startswith("LIVENESS_")
    code, out, _ = cli(served, capsys, "enroll", "get", "--customer-id", "alice")
    assert code == 0 and "template_count" in out and "{" not in out.splitlines()[0]
    code, out, _ = cli(served, capsys, "enroll", "get", "--customer-id", "nobody")
    assert code == 4


def test_import_names_each_failed_customer_and_file(served, photos, capsys, tmp_path) -> None:
    """A customer with one web photo among good ones is refused, with its file named; with
    --skip-bad-images the bad image is left out and the customer enrolled. The resume file
    goes where --state says (or the working directory), never beside the photos."""
    source = tmp_path / "archive"
    good, bad = photos[BOB], photos[f"{BOB}-small"][0]
    (source / "bob").mkdir(parents=True)
    for path in (good[1], good[2], bad):
        (source / "bob" / path.name.replace(".jpg", f"-{path.parent.name}.jpg")).write_bytes(
            path.read_bytes()
        )
    bad_copy = next(p for p in (source / "bob").iterdir() if p.stat().st_size == bad.stat().st_size)
    (source / "nobody").mkdir()
    (source / "nobody" / "blank.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    state, report = tmp_path / "state" / "import.state", tmp_path / "failures.csv"
    state.parent.mkdir()
    code, out, _ = cli(
        served, capsys, "enroll", "import", str(source), "--operator", "op", "--state",
        str(state), "--report", str(report), "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 4 and summary["failed"] == 2 and summary["enrolled"] == 0
    failures = {f["customer_id"]: f for f in summary["failures"]}
    assert failures["bob"]["file"] == str(bad_copy)
    assert failures["bob"]["reason"] == "LOW_QUALITY_SIZE"
    assert "needs 80" in failures["bob"]["message"]
    assert failures["nobody"]["reason"] == "IMAGE_CORRUPT"
    with report.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["customer_id"] for r in rows} == {"bob", "nobody"}
    assert not list(source.glob("*state*")) and not list(tmp_path.glob("*.import-state"))

    code, out, _ = cli(
        served, capsys, "enroll", "import", str(source), "--operator", "op", "--state",
        str(state), "--skip-bad-images", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 4 and summary["enrolled"] == 1  # "nobody" has no image left
    skipped = [f for f in summary["failures"] if f["action"] == "image skipped"]
    assert {(f["customer_id"], f["file"]) for f in skipped} == {
        ("bob", str(bad_copy)), ("nobody", str(source / "nobody" / "blank.jpg"))
    }  # fmt: skip
    assert [json.loads(line)["customer_id"] for line in state.read_text().splitlines()] == ["bob"]
    code, out, _ = cli(served, capsys, "enroll", "get", "--customer-id", "bob", "--json")
    assert json.loads(out)["template_count"] == 2


def test_risk_listings_are_tables(served, capsys) -> None:
    code, out, _ = cli(served, capsys, "risk", "blocklist", "list")
    assert code == 0 and out.strip() == "no entries"
    code, out, _ = cli(served, capsys, "risk", "events", "--customer-id", "alice")
    lines = out.strip().splitlines()  # events: one line each, not a table
    assert code == 0 and "  ENROLL  " in lines[0] and all("  alice  " in line for line in lines)


def test_the_server_comes_from_faceguard_server(served) -> None:
    env = {**os.environ, "FACEGUARD_SERVER": f"127.0.0.1:{served.port}"}
    done = subprocess.run(
        [str(FACEGUARD), "health"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "SERVING"
    env["FACEGUARD_SERVER"] = "127.0.0.1:1"  # nothing listens there
    done = subprocess.run(
        [str(FACEGUARD), "health", "--timeout", "2"], capture_output=True, text=True,
        timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 5 and "UNAVAILABLE" in done.stderr


def test_faceguard_server_is_not_read_as_the_service_settings(monkeypatch) -> None:
    """FACEGUARD_SERVER shares the settings' prefix: the service must not parse the client's
    HOST:PORT as its [server] table (it failed to load any settings)."""
    from service.config import Settings

    monkeypatch.setenv("FACEGUARD_SERVER", "127.0.0.1:50551")
    monkeypatch.setenv("FACEGUARD_SERVER__PORT", "50999")
    assert Settings().server.port == 50999
