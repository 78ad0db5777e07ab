"""The `repwise` command: serve, migrate, and admin account tools."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

import sqlalchemy.exc

from server.config import ConfigError, Settings
from server.errors import DomainError


def _settings(args: argparse.Namespace, *, need_secret: bool = True) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics_port"] = args.metrics_port
    return Settings.from_env(overrides=overrides, need_secret=need_secret)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1:
        # Before server.app is imported: prometheus_client picks multiprocess mode on import.
        from server.prefork import serve_workers

        return serve_workers(settings, args.workers)
    from server.app import RepwiseServer
    from server.catalog.sources import seed_default_catalog
    from server.db import Database, utcnow
    from server.migrate import upgrade

    db = Database(settings.database_url, pool_size=settings.max_workers)
    upgrade(db.engine)
    server = RepwiseServer(settings, db=db)
    seed_default_catalog(db, utcnow)
    server.stop_on_signals()
    port = server.start()
    print(
        f"repwise serving on {settings.host}:{port} ({db.engine.url.render_as_string()})",
        flush=True,
    )
    if server.metrics_port is not None:
        print(
            f"repwise metrics on http://{settings.metrics_host}:{server.metrics_port}/metrics",
            flush=True,
        )
    server.wait()
    db.dispose()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from server.db import Database
    from server.migrate import upgrade

    settings = _settings(args, need_secret=False)
    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine, args.revision)
    db.dispose()
    print(f"database is at revision {args.revision}")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\n")


def cmd_admin(args: argparse.Namespace) -> int:
    from server.app import RepwiseServer
    from server.db import Database
    from server.migrate import upgrade

    settings = _settings(args)
    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine)
    auth = RepwiseServer(settings, db=db).auth
    if args.admin_command == "create":
        user = auth.create_admin(args.email, _read_password())
        print(f"created admin {user.email}")
    else:
        user = auth.promote(args.email)
        print(f"{user.email} is now an admin")
    db.dispose()
    return 0


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from server.catalog.sources import import_free_exercise_db
    from server.db import Database, utcnow
    from server.migrate import upgrade

    settings = _settings(args, need_secret=False)
    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine)
    report = import_free_exercise_db(db, Path(args.file), utcnow)
    db.dispose()
    print(
        f"imported {args.file}: {report.created} new, {report.updated} updated, "
        f"{report.unchanged} unchanged"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from server.app import RepwiseServer
    from server.catalog.sources import seed_default_catalog
    from server.db import Database, utcnow
    from server.logs.import_command import run_import
    from server.migrate import upgrade

    settings = _settings(args)
    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine)
    seed_default_catalog(db, utcnow)
    app = RepwiseServer(settings, db=db)
    try:
        run_import(
            db, app.catalog, app.logs, args.kind, Path(args.file), args.user,
            dry_run=args.dry_run, unit=args.unit, time_zone=args.time_zone, out=sys.stdout,
        )  # fmt: skip
    finally:
        db.dispose()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from server.db import Database
    from server.logs.import_command import run_export
    from server.migrate import upgrade

    settings = _settings(args, need_secret=False)
    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine)
    try:
        if args.output == "-":
            run_export(db, args.user, args.format, unit=args.unit, write=sys.stdout.buffer.write)
        else:
            with open(args.output, "wb") as sink:
                written = run_export(db, args.user, args.format, unit=args.unit, write=sink.write)
            print(f"exported {written} bytes to {args.output}", file=sys.stderr)
    finally:
        db.dispose()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from tqdm import tqdm

    from server.db import Database, utcnow
    from server.migrate import upgrade
    from server.training.repository import Selection
    from server.training.service import BatchTrainer

    settings = _settings(args, need_secret=False)
    db = Database(settings.database_url, pool_size=2)
    try:
        upgrade(db.engine)
        trainer = BatchTrainer(db, utcnow, lease=timedelta(seconds=settings.training_lease_seconds))
        with tqdm(unit="user", desc="training", disable=args.quiet) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            summary = trainer.run_batch(Selection(all_users=args.all), progress)
    finally:
        db.dispose()
    assert summary.start_time is not None and summary.end_time is not None
    seconds = (summary.end_time - summary.start_time).total_seconds()
    print(
        f"trained {summary.trained} users, {summary.failed} failed, "
        f"{summary.skipped} skipped in {seconds:.1f} s"
    )
    for error in summary.errors[:5]:
        print(f"  error: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from server.training import evaluation

    fraction = args.test_fraction
    if args.synthetic is not None:
        report = evaluation.evaluate_synthetic(
            args.synthetic, args.seed, weeks=args.weeks, test_fraction=fraction
        )
    else:
        from server.catalog.sources import seed_default_catalog
        from server.db import Database, utcnow
        from server.migrate import upgrade

        db = Database(_settings(args, need_secret=False).database_url, pool_size=1)
        try:
            upgrade(db.engine)
            if args.user:
                report = evaluation.evaluate_user(db, args.user, test_fraction=fraction)
            else:
                seed_default_catalog(db, utcnow)
                kind, path = args.import_file
                report = evaluation.evaluate_import(
                    db, kind, path, unit=args.unit, time_zone=args.time_zone, test_fraction=fraction
                )
        finally:
            db.dispose()
    print(json.dumps(report.to_json(), indent=2) if args.json else evaluation.format_table(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repwise", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("REPWISE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server (migrates first)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or REPWISE_HOST)")
    serve.add_argument(
        "--port", type=int, help="port (default 50051, or REPWISE_PORT; 0 picks one)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), each with its own gRPC "
        "server and database pool (default 1)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://REPWISE_METRICS_HOST:PORT/metrics "
        "(default off, or REPWISE_METRICS_PORT; 0 picks one)",
    )
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    admin = commands.add_parser("admin", help="manage admin accounts")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_commands.add_parser(
        "create", help="create an admin account (password from a prompt, or one line of stdin)"
    )
    create.add_argument("--email", required=True)
    promote = admin_commands.add_parser("promote", help="make an existing user an admin")
    promote.add_argument("--email", required=True)
    admin.set_defaults(func=cmd_admin)

    catalog = commands.add_parser("catalog", help="manage the shared exercise catalog")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    catalog_import = catalog_commands.add_parser(
        "import", help="import a free-exercise-db exercises.json (idempotent)"
    )
    catalog_import.add_argument("file")
    catalog_import.set_defaults(func=cmd_catalog_import)

    import_ = commands.add_parser(
        "import", help="import a Strong, Hevy or FitNotes CSV export for a user (idempotent)"
    )
    import_.add_argument("kind", choices=["strong", "hevy", "fitnotes"])
    import_.add_argument("file")
    import_.add_argument("--user", required=True, metavar="EMAIL")
    import_.add_argument(
        "--dry-run", action="store_true", help="print the match table; store nothing"
    )
    import_.add_argument(
        "--unit",
        choices=["kg", "lb"],
        help="unit of weights in files that do not say (default: the user's preferred unit)",
    )
    import_.add_argument(
        "--time-zone", help="IANA zone of the file's times (default: the user's time zone)"
    )
    import_.set_defaults(func=cmd_import)

    export = commands.add_parser("export", help="export all of a user's workouts")
    export.add_argument("--user", required=True, metavar="EMAIL")
    export.add_argument("--format", choices=["json", "strong-csv"], default="json")
    export.add_argument("--unit", choices=["kg", "lb"], help="default: the user's preferred unit")
    export.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    export.set_defaults(func=cmd_export)

    train = commands.add_parser(
        "train", help="train users' recommendation models once (safe beside other trainers)"
    )
    which = train.add_mutually_exclusive_group()
    which.add_argument(
        "--all", action="store_true", help="every user with logs, and refit the population model"
    )
    which.add_argument(
        "--stale", action="store_true", help="users with new logs since their model (default)"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    eval_ = commands.add_parser(
        "eval", help="replay histories: hit@1/5/10 and MRR of the recommender and of baselines"
    )
    source = eval_.add_mutually_exclusive_group(required=True)
    source.add_argument("--user", metavar="EMAIL", help="a user in the database")
    source.add_argument(
        "--import",
        dest="import_file",
        nargs=2,
        metavar=("{strong,hevy,fitnotes}", "FILE"),
        help="an export file, parsed and matched as `repwise import` does; nothing is stored",
    )
    source.add_argument("--synthetic", type=int, metavar="N", help="N synthetic users")
    eval_.add_argument("--seed", type=int, default=0, help="of the synthetic users (default 0)")
    eval_.add_argument("--weeks", type=int, default=26, help="synthetic history length (26)")
    eval_.add_argument(
        "--test-fraction", type=float, default=0.25, help="share of each history replayed (0.25)"
    )
    eval_.add_argument("--unit", choices=["kg", "lb"], help="of an import file's bare weights")
    eval_.add_argument("--time-zone", help="IANA zone of an import file's times (default UTC)")
    eval_.add_argument("--json", action="store_true", help="print the results as JSON")
    eval_.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from server.logging_setup import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"repwise: configuration error: {error}", file=sys.stderr)
        return 2
    except DomainError as error:
        print(f"repwise: {error.message}", file=sys.stderr)
        return 1
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        print(f"repwise: cannot use the database: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
