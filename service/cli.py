"""The `faceguard` command: one entry point, a subcommand per job.

Handlers are imported when their subcommand runs, so `faceguard models build` works before
any model exists and `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from service.config import SettingsError
from service.modelpack.manifest import ModelIntegrityError

log = logging.getLogger("faceguard")


def _models_build(args: argparse.Namespace) -> int:
    from service.modelpack.build import BuildError, build_all
    from service.modelpack.fetch import FetchError

    try:
        results = build_all(cache_dir=args.cache_dir, accept_new=args.record)
    except (BuildError, FetchError) as exc:
        log.error("%s", exc)
        return 1
    for result in results:
        log.info("%s: %s", result.source, result.action)
        for check in result.checks:
            sys.stdout.write(json.dumps(check) + "\n")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from service.analyze import run_analyze

    return run_analyze(args)


def _eval(args: argparse.Namespace) -> int:
    from service.evaluation import commands

    return getattr(commands, f"run_{args.eval_command}")(args)


def _bench(args: argparse.Namespace) -> int:
    if args.bench_command == "service":
        from service.bench_service import run_bench_service

        return run_bench_service(args)
    from service.bench import run_bench_pipeline

    return run_bench_pipeline(args)


def _serve(args: argparse.Namespace) -> int:
    from service.api.server import serve
    from service.config import load_settings

    storage: dict[str, object] = {}
    if args.data_dir:
        storage["data_dir"] = args.data_dir
    if args.dev_key:
        storage["dev_generate_key"] = True
    server: dict[str, object] = {"insecure": True} if args.insecure else {}
    if args.port is not None:
        server["port"] = args.port
    if args.host:
        server["host"] = args.host
    settings = load_settings(args.config)
    settings = settings.model_copy(
        update={
            "storage": settings.storage.model_copy(update=storage),
            "server": settings.server.model_copy(update=server),
        }
    )
    return serve(settings)


def _client(args: argparse.Namespace) -> int:
    from enrollment.cli import run

    return run(args)


def _audit(args: argparse.Namespace) -> int:
    from service.audit import run_audit_verify

    return run_audit_verify(args)


def _add_common_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceguard", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="the model pack").add_subparsers(
        dest="models_command", required=True
    )
    build = models.add_parser("build", help="fetch, convert, check and install the models")
    build.add_argument("--cache-dir", type=Path, help="download and build cache")
    build.add_argument(
        "--record", action="store_true", help="accept built files whose sha256 differs"
    )
    build.set_defaults(handler=_models_build)

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--data-dir", type=Path, help="SQLite database, index snapshot, dev keys")
    serve.add_argument("--port", type=int, help="listen port (0: any free port)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument(
        "--dev-key", action="store_true",
        help="development: generate a template key in the data dir when none is configured",
    )  # fmt: skip
    serve.add_argument(
        "--insecure", action="store_true", help="allow plaintext on a non-loopback address"
    )
    serve.set_defaults(handler=_serve)

    audit = commands.add_parser("audit", help="the tamper-evident event log").add_subparsers(
        dest="audit_command", required=True
    )
    audit_verify = audit.add_parser(
        "verify", help="check the hash chain; names the first broken row"
    )
    audit_verify.add_argument("--config", type=Path, help="TOML settings file")
    audit_verify.add_argument("--data-dir", type=Path)
    audit_verify.set_defaults(handler=_audit)

    from enrollment.cli import add_client_commands

    add_client_commands(commands, _client)

    analyze = commands.add_parser(
        "analyze", help="faces, quality, liveness and match scores of images"
    )
    analyze.add_argument("images", nargs="*", type=Path, help="default: the sample photos")
    _add_common_pipeline_options(analyze)
    analyze.set_defaults(handler=_analyze)

    evaluation = commands.add_parser("eval", help="measure accuracy on labelled data")
    evals = evaluation.add_subparsers(dest="eval_command", required=True)
    verify = evals.add_parser("verify", help="1:1 verification on a pairs file")
    verify.add_argument("--pairs", type=Path, required=True, help="CSV with columns a,b,same")
    verify.add_argument("--root", type=Path, required=True, help="folder the paths are under")
    verify.add_argument("--plot", type=Path, help="write ROC and DET curves to this PNG")
    identify = evals.add_parser("identify", help="1:N identification on a folder per person")
    identify.add_argument("--root", type=Path, required=True)
    liveness = evals.add_parser("liveness", help="presentation attack detection")
    liveness.add_argument("--root", type=Path, required=True, help="has live/ and spoof/")
    liveness.add_argument("--threshold", type=float, help="default: the manifest's")
    calibrate = evals.add_parser(
        "calibrate", help="fusion weights and thresholds per FMR, written to the manifest"
    )
    calibrate.add_argument("--pairs", type=Path, required=True, help="training pairs CSV")
    calibrate.add_argument("--root", type=Path, required=True, help="folder the paths are under")
    calibrate.add_argument(
        "--faces", type=Path, action="append", default=[],
        help="folder-per-person tree whose cross-person pairs are impostors (repeatable)",
    )  # fmt: skip
    calibrate.add_argument("--write", action="store_true", help="update models/manifest.toml")
    for sub in (verify, identify, liveness, calibrate):
        _add_common_pipeline_options(sub)
        sub.set_defaults(handler=_eval)

    bench = commands.add_parser("bench", help="latency benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    pipeline = bench.add_parser("pipeline", help="median latency of each pipeline stage")
    pipeline.add_argument("--repeat", type=int, default=30, help="timed runs per case")
    _add_common_pipeline_options(pipeline)
    pipeline.set_defaults(handler=_bench)
    service = bench.add_parser("service", help="verify latency/throughput, import, identify")
    service.add_argument("--threads", type=int, default=1, help="server threads per model")
    service.add_argument("--calls", type=int, default=40, help="verifies per measurement")
    service.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
        help="synthetic gallery sizes for identify",
    )  # fmt: skip
    service.add_argument("--json", action="store_true", help="print one JSON object")
    service.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)],
    )
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, ValidationError, ModelIntegrityError, FileNotFoundError) as exc:
        # Bad settings, missing files or models: a message, not a traceback.
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
