"""The `faceguard` command end to end, as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.modelpack.build import build_all

REPO = Path(__file__).resolve().parents[1]
FACEGUARD = Path(sys.executable).with_name("faceguard")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGUARD), *args], capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_second_models_build_does_nothing() -> None:
    manifest = (REPO / "models" / "manifest.toml").read_bytes()
    results = build_all()
    assert {r.action for r in results} == {"up to date"}
    assert (REPO / "models" / "manifest.toml").read_bytes() == manifest


def test_analyze_reports_faces_and_matches_of_the_sample_photos() -> None:
    result = run("analyze", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["images"]) == 6
    assert all(info["faces"] for info in report["images"].values())
    assert len(report["matches"]) == 15
    assert 0.0 < report["operating_threshold"] < 1.0


def test_analyze_reports_a_broken_file_without_failing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run("analyze", "--json", str(broken))
    assert result.returncode == 0, result.stderr
    assert "IMAGE_" in json.loads(result.stdout)["images"]["broken.jpg"]["error"]


def test_eval_verify_counts_a_faceless_image_as_a_failed_comparison(
    shared_data: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    lines = (shared_data / "pairs" / "lfw_view1_test.csv").read_text().splitlines()
    faceless = "detect/noface/faceapi_white.png"
    pairs.write_text(
        "\n".join([*lines[:21], *lines[-20:], f"{faceless},{lines[1].split(',')[0]},1"])
    )
    plot = tmp_path / "roc.png"
    result = run(
        "eval",
        "verify",
        "--pairs",
        str(pairs),
        "--root",
        str(shared_data),
        "--json",
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "pairs", "failed_images", "accuracy", "auc", "eer", "tar_at_far", "threshold_at_far",
        "operating_threshold", "fmr_at_operating", "fnmr_at_operating",
    }  # fmt: skip
    assert report["pairs"] == 41 and report["failed_images"] == 1
    assert report["accuracy"] >= 0.95
    assert plot.stat().st_size > 10_000


def test_eval_identify_on_a_small_tree(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "people"
    people = sorted((shared_data / "faces" / "lfw").iterdir())
    with_several = [p for p in people if len(list(p.iterdir())) >= 3][:8]
    singles = [p for p in people if len(list(p.iterdir())) == 1][:4]
    for person in with_several + singles:
        shutil.copytree(person, root / person.name)
    result = run("eval", "identify", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gallery_size"] == 8 and report["non_mated_probes"] == 4
    assert report["rank1"] >= 0.9 and report["rank5"] >= report["rank1"]


def test_eval_liveness_reports_pad_error_rates(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "spoof" / "apfol_liveness"
    for label in ("live", "spoof"):
        (tmp_path / label).mkdir()
        for image in sorted((source / label).glob("*.png"))[:5]:
            shutil.copy(image, tmp_path / label)
    result = run("eval", "liveness", "--root", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["attacks"] == 5 and report["bona_fide"] == 5
    assert 0.0 <= report["apcer"] <= 1.0 and 0.0 <= report["bpcer"] <= 1.0


def test_unknown_fmr_target_is_a_clear_error() -> None:
    result = run("analyze", "--json", env={"FACEGUARD_VISION__FMR_TARGET": "1e-9"})
    assert result.returncode != 0
    assert "no calibrated threshold for FMR 1e-9" in result.stderr


@pytest.mark.parametrize("bad", ["--nope", "eval"])
def test_bad_usage_exits_with_usage_error(bad: str) -> None:
    assert run(bad).returncode == 2


def test_every_command_help_reads_like_a_man_page() -> None:
    """Each command's --help: a description, defaults, an example; the client commands also
    say where the server address comes from and what the exit statuses mean."""
    from service.cli.help import is_leaf, walk
    from service.cli.main import build_parser

    parser = build_parser()
    leaves = [(path, sub) for path, sub, _ in walk(parser) if is_leaf(sub)]
    assert len(leaves) > 30
    for path, sub in leaves:
        text = sub.format_help()
        assert sub.description and "examples:\n  faceguard " in text, path
        if any("--server" in a.option_strings for a in sub._actions):
            assert "127.0.0.1:50051" in text and "FACEGUARD_SERVER" in text, path
            assert "exit status:\n  0  APPROVE" in text, path
    identify = dict((" ".join(p), s) for p, s in leaves)["identify"].format_help()
    assert "0 means the service's calibrated operating" in " ".join(identify.split())
    top = parser.format_help()
    assert "FACEGUARD_SERVER" in top and "exit status:" in top and "examples" not in top


def test_version_and_the_server_environment_variable() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("faceguard ")
    shown = run("verify", "--help", env={"FACEGUARD_SERVER": "10.1.2.3:7000"})
    assert "(default: 10.1.2.3:7000)" in shown.stdout


def test_the_readme_commands_table_is_the_parsers() -> None:
    """The README's table is generated: after adding a command or option, run
    `faceguard docs commands --write README.md`."""
    from service.cli.help import commands_markdown, readme_with_table
    from service.cli.main import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = commands_markdown(build_parser())
    assert readme_with_table(readme, table) == readme, (
        "README.md's commands table is out of date: run faceguard docs commands --write README.md"
    )
    for option in ("--request-challenge", "--assess-outcome", "--cache-dir", "--skip-bad-images"):
        assert option in table


def test_eval_verify_refuses_a_wrong_root_and_a_one_class_pairs_file(
    shared_data: Path, tmp_path: Path
) -> None:
    """Both are refused before any image is analysed: a wrong --root used to score every pair
    as failed and report accuracy 0.5; one class used to fail with a traceback after the run."""
    pairs = shared_data / "pairs" / "lfw_view1_test.csv"
    wrong = run("eval", "verify", "--pairs", str(pairs), "--root", str(tmp_path))
    assert wrong.returncode == 1 and "are not under --root" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    genuine = tmp_path / "genuine.csv"
    lines = pairs.read_text().splitlines()
    genuine.write_text("\n".join([lines[0], *[x for x in lines[1:] if x.endswith(",1")][:5]]))
    one_class = run("eval", "verify", "--pairs", str(genuine), "--root", str(shared_data))
    assert one_class.returncode == 1 and "only genuine pairs" in one_class.stderr
    empty = run("eval", "identify", "--root", str(tmp_path))
    assert empty.returncode == 1 and "no person folder" in empty.stderr


def test_eval_tables_round_their_numbers() -> None:
    from tools.evaluation.commands import rounded

    figures = {"accuracy": 0.9949999999, "tar_at_far": {"0.01": 0.99199999}, "n": 3}
    assert rounded(figures) == {"accuracy": 0.995, "tar_at_far": {"0.01": 0.992}, "n": 3}


def test_the_roc_and_det_plot_marks_the_operating_point() -> None:
    import numpy as np
    from matplotlib.figure import Figure

    from tools.evaluation import plots

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.7, 0.1, 300), rng.normal(0.1, 0.1, 3000)])
    labels = np.concatenate([np.ones(300), np.zeros(3000)])
    roc_ax, det_ax = Figure().subplots(1, 2)
    plots._draw_roc(roc_ax, *plots.roc(scores, labels)[:2], 3000, plots.eer(scores, labels))
    fmr, tmr, _ = plots.roc(scores, labels)
    plots._draw_det(det_ax, fmr, 1 - tmr, 3000, 300, plots.eer(scores, labels))
    plots._mark_operating_point(roc_ax, det_ax, scores, labels.astype(bool), (0.53, "1e-4"))
    legend = [t.get_text() for t in roc_ax.get_legend().get_texts()]
    assert any(t.startswith("operating point (FMR target 1e-4): FMR ") for t in legend)
    assert "operating point" in [t.get_text() for t in det_ax.get_legend().get_texts()]


def test_bench_pipeline_explains_why_total_is_less_than_the_sum_of_stages() -> None:
    result = run("bench", "pipeline", "--repeat", "1")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "is less than the sum of the stages: mesh_cues runs only for streamed frames" in text
