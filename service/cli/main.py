"""The `faceguard` command: one entry point, a subcommand per job.

Handlers are imported when their subcommand runs, so `faceguard models build` works before
any model exists and `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata
from pathlib import Path

from pydantic import ValidationError

from enrollment import exit_status
from service.cli.help import ManParser, finish_help, run_docs_commands
from service.config import SettingsError
from service.logs import quiet_libraries, text_handler
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
    from tools.analyze import run_analyze

    return run_analyze(args)


def _eval(args: argparse.Namespace) -> int:
    from tools.evaluation import commands

    return getattr(commands, f"run_{args.eval_command}")(args)


def _bench(args: argparse.Namespace) -> int:
    if args.bench_command == "stream":
        from tools.bench.stream import run_bench_stream

        return run_bench_stream(args)
    if args.bench_command == "callbacks":
        from tools.bench.callbacks import run_bench_callbacks

        return run_bench_callbacks(args)
    if args.bench_command == "follow":
        from tools.bench.follow import run_bench_follow

        return run_bench_follow(args)
    if args.bench_command == "chain":
        from tools.bench.chain import run_bench_chain

        return run_bench_chain(args)
    if args.bench_command == "calibration":
        from tools.bench.calibration import run_bench_calibration

        return run_bench_calibration(args)
    if args.bench_command == "images":
        from tools.bench.images import run_bench_images

        return run_bench_images(args)
    if args.bench_command == "abuse":
        from tools.bench.abuse import run_bench_abuse

        return run_bench_abuse(args)
    if args.bench_command == "fleet":
        from tools.bench.fleet import run_bench_fleet

        return run_bench_fleet(args)
    if args.bench_command == "service":
        from tools.bench.service import run_bench_service

        return run_bench_service(args)
    from tools.bench.pipeline import run_bench_pipeline

    return run_bench_pipeline(args)


def _serve(args: argparse.Namespace) -> int:
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
    if settings.observability.log_format == "json":
        from service.logs import use_json_logs

        use_json_logs(logging.getLogger().level)  # before the server's imports start logging
    from service.api.server import serve

    return serve(settings)


def _client(args: argparse.Namespace) -> int:
    from enrollment.cli import run

    return run(args)


def _settings_for_store(args: argparse.Namespace):
    """Settings from --config with --data-dir applied: for commands that open the store."""
    from service.config import load_settings

    settings = load_settings(args.config)
    if args.data_dir:
        storage = settings.storage.model_copy(update={"data_dir": args.data_dir})
        settings = settings.model_copy(update={"storage": storage})
    return settings


def _certs(args: argparse.Namespace) -> int:
    from service.cli.certs import run_certs_dev

    return run_certs_dev(args)


def _keys(args: argparse.Namespace) -> int:
    from service.cli.keys import run_keys_rotate

    return run_keys_rotate(_settings_for_store(args), args.wait)


def _retention(args: argparse.Namespace) -> int:
    from service.app.assembly import open_store
    from service.app.retention import run_retention

    settings = _settings_for_store(args)
    days = args.inactive_days if args.inactive_days is not None else settings.privacy.inactive_days
    with open_store(settings) as store:
        return run_retention(store, days, args.dry_run, settings.privacy.outbox_keep_days)


def _db(args: argparse.Namespace) -> int:
    from service.cli.db import run_db

    return run_db(_settings_for_store(args), args.db_command)


def _risk(args: argparse.Namespace) -> int:
    from enrollment.risk_cli import run

    return run(args)


def _review(args: argparse.Namespace) -> int:
    from enrollment.review_cli import run

    return run(args)


def _calibration(args: argparse.Namespace) -> int:
    from enrollment.calibration_cli import run

    return run(args)


def _fraud_sink(args: argparse.Namespace) -> int:
    from tools.fraud_sink import run_fraud_sink

    return run_fraud_sink(args)


def _kiosk(args: argparse.Namespace) -> int:
    from enrollment.kiosk import run_kiosk

    return run_kiosk(args)


def _fuzz(args: argparse.Namespace) -> int:
    from tools.fuzz import fuzz

    report = fuzz(args.count, args.workers)
    summary = {"inputs": report.inputs, "crashes": len(report.crashes)}
    sys.stdout.write(json.dumps(summary | {"first_crashes": report.crashes[:20]}) + "\n")
    return 1 if report.crashes else 0


def _audit(args: argparse.Namespace) -> int:
    from service.cli.audit_commands import run_audit_checkpoint, run_audit_verify

    return (run_audit_checkpoint if args.audit_command == "checkpoint" else run_audit_verify)(args)


def _population(text: str) -> tuple[str, Path]:
    """argparse type of `eval population --faces NAME=DIR`."""
    from tools.evaluation.population import parse_population

    try:
        return parse_population(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_common_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


DESCRIPTION = """\
faceguard: biometric identity verification for bank smart branches.

The service (`faceguard serve`) finds the face in kiosk frames, checks its quality and
liveness, matches it 1:1 or 1:N against enrolled customers, applies the fraud risk rules and
answers with a Decision (APPROVE, REVIEW or DECLINE, with reason codes), recorded in a
hash-chained audit log. The other commands are its clients (enroll, verify, identify,
check-liveness, kiosk, health, risk) and its tools (models, audit, keys, certs, retention,
eval, bench, analyze, fuzz). `faceguard COMMAND --help` describes each, with an example."""

EPILOG = f"""\
quick start:
  make run                                      # terminal 1: serves on 127.0.0.1:50051
  faceguard enroll add --customer-id alice --operator desk-7 alice1.jpg alice2.jpg
  faceguard verify --customer-id alice alice3.jpg

environment:
  FACEGUARD_SERVER      the client commands' --server (default 127.0.0.1:50051)
  FACEGUARD_<SECTION>__<SETTING>
                        any setting, e.g. FACEGUARD_QUALITY__PROFILE=id_photo
                        (see README.md, Configuration)

{exit_status.HELP}"""


def _version() -> str:
    try:
        return f"faceguard {metadata.version('faceguard')}"
    except metadata.PackageNotFoundError:
        return "faceguard (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = ManParser(prog="faceguard", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    serve.add_argument(
        "--data-dir", type=Path,
        help="SQLite database, index snapshot, dev keys (default: storage.data_dir, ./data)",
    )  # fmt: skip
    serve.add_argument(
        "--port", type=int, help="listen port (default: server.port, 50051; 0: any free port)"
    )
    serve.add_argument("--host", help="listen address (default: server.host, 127.0.0.1)")
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
    audit_verify.add_argument(
        "--checkpoints", type=Path,
        help="signed checkpoint file to check against (default: the data dir's)",
    )  # fmt: skip
    audit_verify.add_argument("--json", action="store_true", help="print one JSON object")
    audit_checkpoint = audit.add_parser(
        "checkpoint", help="append a signed checkpoint of the chain head (ship it elsewhere)"
    )
    for sub in (audit_verify, audit_checkpoint):
        sub.add_argument("--config", type=Path, help="TOML settings file")
        sub.add_argument(
            "--data-dir", type=Path, help="the service's data directory (default: storage.data_dir)"
        )
        sub.set_defaults(handler=_audit)

    from enrollment.cli import add_client_commands

    add_client_commands(commands, _client)

    from enrollment.kiosk import add_kiosk_command

    add_kiosk_command(commands, _kiosk)

    from enrollment.risk_cli import add_risk_commands

    add_risk_commands(commands, _risk)

    from enrollment.review_cli import add_review_commands

    add_review_commands(commands, _review)

    from enrollment.calibration_cli import add_calibration_commands

    add_calibration_commands(commands, _calibration)

    sink = commands.add_parser(
        "fraud-sink", help="reference FraudEngine: verifies, dedupes and stores callbacks"
    )
    sink.add_argument("--port", type=int, required=True, help="listen port (0: any free port)")
    sink.add_argument("--host", default="127.0.0.1", help="listen address")
    sink.add_argument("--db", type=Path, required=True, help="SQLite file for received events")
    sink.add_argument("--hmac-key-file", type=Path, required=True, help="the shared HMAC key")
    sink.add_argument("--key-id", default="k1", help="id of the HMAC key, as the service signs")
    sink.add_argument("--fail-rate", type=float, default=0.0, help="share of calls to fail")
    sink.add_argument("--hang", action="store_true", help="start hanging (SIGUSR1 toggles)")
    sink.add_argument(
        "--assess-outcome", choices=("APPROVE", "REVIEW", "DECLINE"), default="APPROVE",
        help="what Assess recommends",
    )  # fmt: skip
    sink.add_argument("--seed", type=int, help="seed of the injected failures")
    sink.set_defaults(handler=_fraud_sink)

    certs = commands.add_parser("certs", help="TLS certificates").add_subparsers(
        dest="certs_command", required=True
    )
    dev_certs = certs.add_parser(
        "dev", help="development CA, server and per-role client certificates"
    )
    dev_certs.add_argument("--out", type=Path, default=Path("certs"), help="folder to write")
    dev_certs.add_argument(
        "--host", action="append", default=[],
        help="server name or address (repeatable; default localhost and 127.0.0.1)",
    )  # fmt: skip
    dev_certs.add_argument(
        "--client", action="append", default=[],
        help="extra client NAME:ROLE[+ROLE][:DEVICE], e.g. kiosk-K-009:kiosk:K-009",
    )  # fmt: skip
    dev_certs.set_defaults(handler=_certs)

    keys = commands.add_parser("keys", help="template encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    rotate = keys.add_parser(
        "rotate", help="add a key and re-encrypt every template under it, while serving"
    )
    rotate.add_argument("--wait", type=float, default=5.0,
        help="seconds between writing the key file and re-encrypting (services reload it)",
    )  # fmt: skip
    retention = commands.add_parser("retention", help="the retention policy").add_subparsers(
        dest="retention_command", required=True
    )
    purge = retention.add_parser(
        "run", help="purge templates of inactive customers and of expired consents"
    )
    purge.add_argument("--inactive-days", type=float, help="default: privacy.inactive_days")
    purge.add_argument("--dry-run", action="store_true", help="count who is due, erase nothing")
    db = commands.add_parser("db", help="the database schema (migrations)").add_subparsers(
        dest="db_command", required=True
    )
    db_upgrade = db.add_parser(
        "upgrade", help="migrate the schema to this version's, under a lock (safe beside replicas)"
    )
    db_current = db.add_parser(
        "current", help="print the database's and this version's schema; exit 1 if they differ"
    )
    fuzz = commands.add_parser(
        "fuzz", help="fuzz the image decoder and request validation; exit 1 on any crash"
    )
    fuzz.add_argument("--count", type=int, default=100_000, help="inputs, split over targets")
    fuzz.add_argument("--workers", type=int, default=2, help="worker processes")
    fuzz.set_defaults(handler=_fuzz)

    for sub, handler in (
        (rotate, _keys),
        (purge, _retention),
        (db_upgrade, _db),
        (db_current, _db),
    ):
        sub.add_argument("--config", type=Path, help="TOML settings file")
        sub.add_argument(
            "--data-dir", type=Path, help="the service's data directory (default: storage.data_dir)"
        )
        sub.set_defaults(handler=handler)

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
    identify.add_argument("--root", type=Path, required=True, help="a folder per person")
    liveness = evals.add_parser("liveness", help="presentation attack detection")
    liveness.add_argument("--root", type=Path, help="has live/ and spoof/")
    liveness.add_argument(
        "--responders", type=Path, metavar="DIR",
        help="clips of people answering challenges and their labels.csv: detection per "
        "challenge, two-challenge session pass rate, time to answer, FACE_CHANGED ends",
    )  # fmt: skip
    liveness.add_argument("--threshold", type=float, help="default: the manifest's")
    liveness.add_argument(
        "--stream", action="store_true",
        help="also streamed sessions: APCER per generated attack, BPCER on the live video",
    )  # fmt: skip
    liveness.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data",
        help="--stream: the development data (stills, apfol_videos)",
    )  # fmt: skip
    liveness.add_argument("--stills", type=int, default=8, help="--stream: stills to attack with")
    liveness.add_argument(
        "--seconds", type=float, default=6.0, help="--stream: length of a generated attack"
    )
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
    by_population = evals.add_parser(
        "population", help="FMR / target and TAR per population, before and after calibration"
    )
    by_population.add_argument(
        "--faces", type=_population, action="append", required=True, metavar="NAME=DIR",
        help="a population: folder-per-person tree (repeatable)",
    )  # fmt: skip
    by_population.add_argument("--people", type=int, help="sample at most this many people")
    by_population.add_argument("--images-per-person", type=int, help="first N images of each")
    by_population.add_argument("--seed", type=int, default=0, help="people sample and split")
    by_population.add_argument(
        "--splits", type=int, default=1, help="calibrate on this many random halves (seeds)"
    )
    by_population.add_argument(
        "--held-out-people", type=int, help="people left out of the gallery (default: half)"
    )
    by_population.add_argument("--members", help="embedder members, comma-separated")
    by_population.add_argument("--weights", help="--members: their fusion weights")
    by_population.add_argument(
        "--cohort", type=int, default=0, help="AS-norm scores with this top-k cohort (0: off)"
    )
    by_population.add_argument(
        "--min-people", type=int, help="estimator: fewest gallery people to calibrate (10)"
    )
    by_population.add_argument(
        "--max-interval-ratio", type=float,
        help="estimator: refuse when the threshold interval's low end accepts more (5x target)",
    )  # fmt: skip
    for sub in (verify, identify, liveness, calibrate, by_population):
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
    service.add_argument(
        "--threads", type=int, default=2, help="model runs a server call makes side by side"
    )
    service.add_argument("--calls", type=int, default=40, help="verifies per measurement")
    service.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
        help="synthetic gallery sizes for identify",
    )  # fmt: skip
    service.add_argument("--json", action="store_true", help="print one JSON object")
    service.set_defaults(handler=_bench)
    stream = bench.add_parser("stream", help="median ms per frame of a streamed session")
    stream.add_argument(
        "--threads", type=int, default=2, help="model runs a frame makes side by side"
    )
    stream.add_argument("--frames", type=int, default=120, help="video frames to time")
    stream.add_argument("--video", type=Path, help="default: the shared live video (real2.webm)")
    _add_common_pipeline_options(stream)
    stream.set_defaults(handler=_bench)
    calibration = bench.add_parser(
        "calibration", help="time and memory of a calibration proposal on a synthetic gallery"
    )
    calibration.add_argument("--customers", type=int, default=5000, help="all sampled")
    calibration.add_argument("--templates", type=int, default=3, help="per customer")
    calibration.add_argument("--repeat", type=int, default=3, help="timed proposals")
    calibration.add_argument("--json", action="store_true", help="print one JSON line")
    calibration.set_defaults(handler=_bench)
    callbacks = bench.add_parser(
        "callbacks", help="decisions delivered through a failing sink and kill -9s; risk cost"
    )
    callbacks.add_argument("--decisions", type=int, default=1000, help="decisions to make")
    callbacks.add_argument(
        "--fail-rate", type=float, default=0.3, help="share of deliveries the sink fails"
    )
    callbacks.add_argument("--kills", type=int, default=2, help="kill -9s of the service")
    callbacks.add_argument("--json", action="store_true", help="print one JSON object")
    callbacks.set_defaults(handler=_bench)
    chain = bench.add_parser(
        "chain", help="decisions/s and audit-chain lock wait with several writers on PostgreSQL"
    )
    chain.add_argument("--url", required=True, help="a throwaway PostgreSQL database URL")
    chain.add_argument("--writers", type=int, default=3, help="stores, as replicas")
    chain.add_argument("--threads", type=int, default=8, help="threads per writer")
    chain.add_argument("--seconds", type=float, default=10.0, help="per run")
    chain.add_argument("--json", action="store_true", help="print one JSON object")
    chain.set_defaults(handler=_bench)
    follow = bench.add_parser(
        "follow", help="lag until a change through one replica reaches another's index"
    )
    follow.add_argument("--url", help="a throwaway database URL (default: temporary SQLite)")
    follow.add_argument("--changes", type=int, default=200, help="enrolments + erasures")
    follow.add_argument("--poll-s", type=float, default=0.5, help="gallery.follow_poll_s")
    follow.add_argument("--json", action="store_true", help="print one JSON object")
    follow.set_defaults(handler=_bench)
    images = bench.add_parser(
        "images", help="a vision worker's CPU per Verify frame by kind of image, and per request"
    )
    images.add_argument("--repeat", type=int, default=5, help="timed runs per image")
    images.add_argument("--json", action="store_true", help="print one JSON list")
    images.set_defaults(handler=_bench)
    abuse = bench.add_parser(
        "abuse", help="another kiosk's verify latency while one kiosk certificate attacks"
    )
    abuse.add_argument("--calls", type=int, default=20, help="victim verifies per phase")
    abuse.add_argument("--phase-s", type=float, default=60.0, help="longest phase (seconds)")
    abuse.add_argument("--streams", type=int, default=8, help="attacker's faceless streams")
    abuse.add_argument("--watches", type=int, default=64, help="attacker's Health.Watch calls")
    abuse.add_argument("--frame-every", type=float, default=3.0, help="seconds between frames")
    abuse.add_argument("--attackers", type=int, default=8, help="threads sending lying images")
    abuse.add_argument("--json", action="store_true", help="print one JSON object")
    abuse.set_defaults(handler=_bench)
    fleet = bench.add_parser(
        "fleet", help="replicas on one PostgreSQL behind round-robin, one killed: lost, visible"
    )
    fleet.add_argument(
        "--replicas", type=int, default=3, metavar="N", help="faceguard serve processes"
    )
    fleet.add_argument("--clients", type=int, default=8, metavar="N", help="concurrent clients")
    fleet.add_argument("--seconds", type=float, default=60.0, help="length of the mixed load")
    fleet.add_argument("--kill", action="store_true", help="SIGKILL one replica halfway")
    fleet.add_argument(
        "--no-baseline", action="store_true", help="skip the same load against one replica"
    )
    fleet.add_argument("--json", action="store_true", help="print one JSON object")
    fleet.set_defaults(handler=_bench)

    docs = commands.add_parser("docs", help="documentation generated from this program")
    docs_commands = docs.add_subparsers(dest="docs_command", required=True).add_parser(
        "commands", help="the README's commands table, from this parser (Markdown)"
    )
    docs_commands.add_argument(
        "--write", type=Path, help="replace the table between the markers in this README"
    )
    docs_commands.set_defaults(handler=lambda args: run_docs_commands(args, parser))
    finish_help(parser, exit_status.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, handlers=[text_handler()]
    )
    quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, ValidationError, ModelIntegrityError, FileNotFoundError) as exc:
        # Bad settings, missing files or models: a message, not a traceback.
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
