"""`faceguard eval ...`: accuracy figures from labelled data, printed as a table or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit
from rich.console import Console
from rich.table import Table

from service.config import SettingsError, load_settings, operating_threshold
from service.modelpack.manifest import MANIFEST_PATH, load_manifest
from service.vision.decode import ImageDecodeError
from service.vision.embed import fuse, merge_views
from service.vision.pipeline import FacePipeline, primary_face
from tools.evaluation import runner
from tools.evaluation.plots import plot_roc_det
from tools.evaluation.scores import (
    fmr_is_resolvable,
    identification_report,
    pad_report,
    threshold_at_fmr,
    verification_report,
)

log = logging.getLogger(__name__)

FMR_TARGETS = ("1e-3", "1e-4", "1e-5")


def _pipeline(args: argparse.Namespace, liveness: bool = False) -> FacePipeline:
    settings = load_settings(args.config)
    return FacePipeline(replace(settings.pipeline_config(), liveness=liveness))


def rounded(value: Any) -> Any:
    """Floats to 4 significant digits, inside dicts and lists too (for the tables)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def _emit(args: argparse.Namespace, title: str, figures: dict[str, Any]) -> None:
    """Print the figures as one JSON object (--json, full precision) or as a table with the
    numbers rounded to 4 significant digits."""
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    table = Table(title=title, show_header=False)
    for key, value in rounded(figures).items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else f"{value}")
    Console().print(table)


class EvaluationInputError(ValueError):
    """Labelled data that cannot give a meaningful figure: refused before the run."""


def check_pairs(pairs: list[runner.Pair], root: Path) -> None:
    """A pairs file the run can measure: both classes present and its images under `root`
    (a wrong --root would otherwise score every pair as failed and report accuracy 0.5)."""
    if not root.is_dir():
        raise EvaluationInputError(f"--root {root} is not a folder")
    classes = {p.same for p in pairs}
    if classes != {True, False}:
        kind = "no pairs" if not pairs else "only " + ("genuine" if True in classes else "impostor")
        raise EvaluationInputError(
            f"the pairs file has {kind} pairs: accuracy, ROC and FMR need both same=1 and "
            "same=0 rows"
        )
    names = sorted({name for p in pairs for name in (p.a, p.b)})
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise EvaluationInputError(
            f"{len(missing)} of {len(names)} images of the pairs file are not under --root "
            f"{root} (e.g. {root / missing[0]}): is --root the folder the paths are relative to?"
        )


def run_verify(args: argparse.Namespace) -> int:
    pairs = runner.read_pairs(args.pairs)
    try:
        check_pairs(pairs, args.root)
    except EvaluationInputError as exc:
        log.error("%s", exc)
        return 1
    pipeline = _pipeline(args)
    analyses = runner.analyse_all(
        pipeline, args.root, chain.from_iterable((p.a, p.b) for p in pairs)
    )
    scores, labels = runner.pair_scores(pairs, analyses)
    settings = load_settings(args.config)
    threshold = operating_threshold(load_manifest(), settings.vision.fmr_target)
    failed = sum(1 for a in analyses.values() if a is None)
    report = verification_report(scores, labels, failed, threshold)
    if args.plot:
        plot_roc_det(
            scores, labels, args.plot, f"{args.pairs.name}: {pipeline.embedder.spec.version}",
            operating=(threshold, settings.vision.fmr_target),
        )  # fmt: skip
    _emit(args, f"verification: {args.pairs.name}", report.to_dict())
    return 0


def run_identify(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        log.error("--root %s is not a folder", args.root)
        return 1
    people = runner.identity_tree(args.root)
    if sum(len(images) >= 2 for images in people.values()) == 0:
        log.error(
            "--root %s has no person folder with two or more images: nothing to search for "
            "(it needs a folder per person)", args.root,
        )  # fmt: skip
        return 1
    pipeline = _pipeline(args)
    analyses = runner.analyse_all(pipeline, args.root, chain.from_iterable(people.values()))
    data = runner.identification_scores(people, analyses)
    report = identification_report(data.similarities, data.probe_ids, data.gallery_ids)
    figures = report.to_dict() | {"failed_images": data.failed_images}
    _emit(args, f"identification: {args.root.name}", figures)
    return 0


def run_liveness(args: argparse.Namespace) -> int:
    if args.root is None and args.responders is None:
        raise SettingsError("eval liveness needs --root, --responders or both")
    pipeline = _pipeline(args, liveness=True)
    table = load_manifest().section("liveness")
    figures: dict[str, Any] = {"model": pipeline.liveness_model.model.name}
    if args.root is not None:
        scores, attacks, undetected = runner.liveness_scores(pipeline, args.root)
        threshold = args.threshold if args.threshold is not None else float(table["threshold"])
        report = pad_report(scores, attacks, threshold)
        figures |= report.to_dict() | {"no_face_detected": undetected}
    if args.responders is not None:
        from tools.evaluation.responders import responder_figures

        figures["responders"] = responder_figures(
            pipeline, load_settings(args.config).stream, float(table["threshold"]),
            args.responders,
        )  # fmt: skip
    if args.stream:
        from tools.evaluation.stream_eval import stream_figures

        figures["stream"] = stream_figures(
            pipeline, load_settings(args.config).stream, float(table["threshold"]),
            args.shared, args.stills, args.seconds,
        )  # fmt: skip
    title = f"liveness: {(args.root or args.responders).name}"
    if args.json or "responders" not in figures:
        _emit(args, title, figures)
        return 0
    from tools.evaluation.responders import tables

    _emit(args, title, {k: v for k, v in figures.items() if k != "responders"})
    for printed in tables(figures["responders"]):
        Console().print(printed)
    return 0


MemberVectors = tuple[list[np.ndarray], list[np.ndarray]]


def member_vectors(pipeline: FacePipeline, path: Path) -> MemberVectors | None:
    """Each member network's unit embedding of the image's main face, as a template and as a
    probe (they differ when the manifest's `flip` and `probe_flip` do); None: no face."""
    analysis_image = pipeline.decode(path.read_bytes())
    face = primary_face(pipeline.detect(analysis_image), analysis_image)
    if face is None:
        return None
    chips = pipeline.align(analysis_image, [face])
    spec = pipeline.embedder.spec
    templates, probes = [], []
    for member, batch in zip(pipeline.embedder.members, chips, strict=True):
        raws = [member.run(view) for view in member.views(batch, spec.flip or spec.probe_flip)]
        templates.append(merge_views(raws if spec.flip else raws[:1])[0])
        probes.append(merge_views(raws if spec.probe_flip else raws[:1])[0])
    return templates, probes


def _probe_figures(
    templates: np.ndarray, probes: np.ndarray, people: np.ndarray,
    genuine: np.ndarray, thresholds: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """TAR and FMR at the calibrated thresholds when a probe is embedded differently from the
    templates: genuine pairs scored both ways round, impostors every cross-person
    template-probe pair of the `--faces` trees."""
    cross = templates @ probes.T
    impostors = cross[people[:, None] != people[None, :]]
    return {
        "probe_tar_at_thresholds": {
            k: round(float((genuine >= v).mean()), 6) for k, v in thresholds.items()
        },
        "probe_fmr_at_thresholds": {
            k: float((impostors >= v).mean()) for k, v in thresholds.items()
        },
        "probe_impostor_pairs": int(impostors.size),
    }


def _cross_person_impostors(vectors: np.ndarray, people: np.ndarray) -> np.ndarray:
    """Cosines of every pair of images of different people (upper triangle)."""
    sims = vectors @ vectors.T
    rows, cols = np.triu_indices(len(vectors), k=1)
    different = people[rows] != people[cols]
    return sims[rows[different], cols[different]]


def run_calibrate(args: argparse.Namespace) -> int:
    """Fusion weights from training-pair impostor spread; thresholds per FMR target.

    Weights are 1/sqrt(std) of each member's impostor cosines on the training pairs, which
    makes the fused cosine rank pairs as the sum of z-normalised member scores. Thresholds are
    set on the impostor scores of the training pairs plus every cross-person pair of the
    `--faces` trees.
    """
    pipeline = _pipeline(args)
    pairs = runner.read_pairs(args.pairs)

    def key(path: Path) -> Path:
        return path.resolve()

    paths = {key(args.root / name) for p in pairs for name in (p.a, p.b)}
    trees = [(tree, runner.identity_tree(tree)) for tree in args.faces]
    paths |= {key(tree / n) for tree, people in trees for images in people.values() for n in images}
    both: dict[Path, MemberVectors | None] = {}
    with runner.Progress(transient=True) as progress:
        task = progress.add_task("embedding", total=len(paths))
        for path in sorted(paths):
            both[path] = member_vectors(pipeline, path)
            progress.advance(task)
    vectors = {path: found[0] if found else None for path, found in both.items()}
    members = pipeline.embedder.members
    pair_vectors = [(vectors[key(args.root / p.a)], vectors[key(args.root / p.b)]) for p in pairs]
    ok = [i for i, (a, b) in enumerate(pair_vectors) if a is not None and b is not None]
    member_scores = np.array(
        [[float(a @ b) for a, b in zip(*pair_vectors[i], strict=True)] for i in ok]
    )
    labels = np.array([pairs[i].same for i in ok])
    impostor_std = member_scores[~labels].std(axis=0)
    weights = 1.0 / np.sqrt(impostor_std)
    w2 = weights**2 / (weights**2).sum()

    tree_images = [
        (vectors[key(tree / name)], f"{tree}/{person}")
        for tree, people in trees
        for person, images in people.items()
        for name in images
        if vectors[key(tree / name)] is not None
    ]
    fused = np.stack([fuse(parts, tuple(weights)) for parts, _ in tree_images])
    impostors = np.concatenate([
        member_scores[~labels] @ w2,
        _cross_person_impostors(fused, np.array([person for _, person in tree_images])),
    ])  # fmt: skip
    genuine = member_scores[labels] @ w2
    scores = np.concatenate([genuine, impostors])
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostors))])
    unresolvable = [t for t in FMR_TARGETS if not fmr_is_resolvable(len(impostors), float(t))]
    if unresolvable:
        raise SettingsError(
            f"{len(impostors)} impostor pairs cannot measure FMR {', '.join(unresolvable)}: "
            "add --faces trees"
        )
    thresholds = {target: threshold_at_fmr(scores, truth, float(target)) for target in FMR_TARGETS}
    figures = {
        "images": len(paths),
        "failed_images": sum(1 for v in vectors.values() if v is None),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostors),
        "members": [m.name for m in members],
        "impostor_std": [round(float(s), 6) for s in impostor_std],
        "weights": [round(float(w), 6) for w in weights],
        "thresholds": {k: round(v, 6) for k, v in thresholds.items()},
        "tar_at_thresholds": {
            k: round(float((genuine >= v).mean()), 6) for k, v in thresholds.items()
        },
    }
    spec = pipeline.embedder.spec
    if spec.probe_flip != spec.flip:
        weighted = tuple(weights)
        probe_genuine = np.array([
            float(fuse(x[0], weighted) @ fuse(y[1], weighted))
            for p in pairs if p.same
            for a, b in [(both[key(args.root / p.a)], both[key(args.root / p.b)])] if a and b
            for x, y in ((a, b), (b, a))
        ])  # fmt: skip
        tree_both = [
            both[key(tree / name)] for tree, people in trees
            for images in people.values() for name in images if both[key(tree / name)]
        ]  # fmt: skip
        figures |= _probe_figures(
            np.stack([fuse(t, weighted) for t, _ in tree_both]),
            np.stack([fuse(p, weighted) for _, p in tree_both]),
            np.array([person for _, person in tree_images]), probe_genuine, thresholds,
        )  # fmt: skip
    if args.write:
        _write_calibration(figures)
    _emit(args, "calibration", figures)
    return 0


def _write_calibration(figures: dict[str, Any]) -> None:
    """Store weights and thresholds in the manifest's `[embedder]` table."""
    document = tomlkit.parse(MANIFEST_PATH.read_text(encoding="utf-8"))
    embedder = document["embedder"]
    embedder["weights"] = figures["weights"]
    thresholds = tomlkit.table()
    for key, value in figures["thresholds"].items():
        thresholds[key] = value
    embedder["thresholds"] = thresholds
    probe_keys = ("probe_tar_at_thresholds", "probe_fmr_at_thresholds")
    embedder["calibration"] = {
        "impostor_pairs": figures["impostor_pairs"],
        "genuine_pairs": figures["genuine_pairs"],
        "tar_at_thresholds": figures["tar_at_thresholds"],
    } | {key: figures[key] for key in probe_keys if key in figures}
    tmp = MANIFEST_PATH.with_suffix(".toml.partial")
    tmp.write_text(tomlkit.dumps(document), encoding="utf-8")
    tmp.replace(MANIFEST_PATH)


def run_population(args: argparse.Namespace) -> int:
    """FMR / target and TAR per population, before and after calibration on its own gallery."""
    from tools.evaluation import population

    settings = load_settings(args.config)
    manifest = load_manifest()
    table = manifest.section("embedder")
    members = args.members.split(",") if args.members else list(table["members"])
    weights = [float(w) for w in args.weights.split(",")] if args.weights else table["weights"]
    if len(weights) != len(members):
        raise SettingsError(f"{len(members)} members but {len(weights)} weights")
    caps = [cap for cap in (args.people, args.images_per_person) if cap is not None]
    counts = (args.splits, *caps, args.cohort + 1)
    ratio = args.max_interval_ratio
    people_rule = args.min_people is not None and args.min_people < 2
    if min(counts) < 1 or people_rule or (ratio is not None and not ratio >= 1):
        raise SettingsError(
            "--splits, --people and --images-per-person must be at least 1, --cohort at least 0,"
            " --min-people at least 2, --max-interval-ratio at least 1"
        )
    embedders = sorted(n for n, m in manifest.models.items() if m.task == "embedder")
    if unknown := sorted(set(members) - set(embedders)):
        raise SettingsError(f"unknown embedder(s) {', '.join(unknown)}; the pack has {embedders}")
    shipped_embedder = members == list(table["members"]) and weights == list(table["weights"])
    variant = table | {"members": members, "weights": weights}
    manifest = replace(manifest, sections=manifest.sections | {"embedder": variant})
    config = replace(settings.pipeline_config(), liveness=False, facemesh=False)
    pipeline = FacePipeline(config, manifest=manifest)

    embedded: dict[Path, tuple[np.ndarray, np.ndarray] | None] = {}

    def embed(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """The fused template and probe of an image, each image embedded once per run."""
        key = path.resolve()
        if key not in embedded:
            try:
                found = member_vectors(pipeline, path)
            except (OSError, ImageDecodeError) as exc:
                log.warning("%s: %s", path, exc)
                found = None
            embedded[key] = found and tuple(
                fuse([v[None] for v in parts], tuple(weights))[0] for parts in found
            )
        return embedded[key]

    populations = []
    for name, root in args.faces:
        tree = population.select_people(
            runner.identity_tree(root), args.people, args.images_per_person, args.seed
        )
        try:
            populations.append(population.embed_population(name, root, tree, embed))
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
    shipped = {
        key: float(table["thresholds"][key]) if shipped_embedder else None
        for key in population.TARGETS
    }
    min_people = args.min_people if args.min_people is not None else population.MIN_PEOPLE
    try:
        figures = population.population_report(
            populations, shipped, seed=args.seed, cohort_k=args.cohort, min_people=min_people,
            splits=args.splits, held_out=args.held_out_people,
            max_interval_ratio=ratio or population.MAX_INTERVAL_FMR_RATIO,
        )  # fmt: skip
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    report = {"embedder": {"members": members, "weights": weights}, "cohort_k": args.cohort}
    report |= figures
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        for rendered in population.report_tables(report):
            Console().print(rendered)
    return 0
