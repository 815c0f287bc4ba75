"""The ``mlapi`` command: thin. Parse, build Settings once, call into the package.
Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mlapi import __version__
from mlapi.errors import ConfigError

if TYPE_CHECKING:
    from mlapi.settings import Settings

# Command-line options that override settings: (flag, environment name, type, help).
SERVE_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--host", "API_HOST", str, "address to listen on"),
    ("--port", "API_PORT", int, "port to listen on"),
    ("--grpc-port", "API_GRPC_PORT", int, "gRPC port (default 8001; 0: no gRPC)"),
    ("--model-path", "MODEL_PATH", str, "model repository folder"),
    ("--workers", "WORKERS", int, "worker processes"),
    ("--log-level", "LOG_LEVEL", str, "debug, info, warning, error"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mlapi: error: {message}\n")


def _version_number(text: str) -> int:
    from mlapi.repository.scan import VERSION

    if not VERSION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"'{text[:32]}' is not a version (1, 2, ...)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlapi", description="A fast, safe model server (Open Inference Protocol V2)."
    )
    parser.add_argument("--version", action="version", version=f"mlapi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve every model under MODEL_PATH")
    for flag, env, kind, text in SERVE_OPTIONS:
        serve.add_argument(flag, dest=env, type=kind, help=f"{text} (env {env})")

    health = commands.add_parser("healthcheck", help="exit 0 only if /health answers 200")
    health.add_argument("--url", help="full URL (default: http://API_HOST:API_PORT/health)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")

    models = commands.add_parser("models", help="inspect model repositories")
    model_commands = models.add_subparsers(
        dest="models_command", required=True, parser_class=_Parser
    )
    model_commands.add_parser("list", help="list the models under MODEL_PATH")
    validate = model_commands.add_parser("validate", help="load and warm up every model under PATH")
    validate.add_argument("path", type=Path)
    publish = model_commands.add_parser(
        "publish",
        help="copy a version folder into a repository, all at once, with a manifest",
    )
    publish.add_argument("source", help="the version folder, or - for a tar archive on stdin")
    publish.add_argument("--model-path", dest="MODEL_PATH", help="the repository (env MODEL_PATH)")
    publish.add_argument("--name", help="model name (default: the folder's name)")
    publish.add_argument(
        "--version", dest="model_version", type=_version_number, help="default: newest + 1"
    )
    publish.add_argument(
        "--strategy",
        choices=("switch", "shadow", "canary"),
        help="how this version takes over (written into its model.toml [rollout]); "
        "default: what the model's model.toml says, else switch",
    )
    imported = model_commands.add_parser(
        "import",
        help="convert a text model folder (sentence-transformers) or a trusted pickle "
        "(scikit-learn, XGBoost, LightGBM) to a safe format, check it against the original, "
        "and publish it",
    )
    imported.add_argument("source", type=Path, help="a text model folder, or a .pkl/.joblib file")
    imported.add_argument("--name", required=True, help="model name in the repository")
    imported.add_argument("--model-path", dest="MODEL_PATH", help="the repository (env MODEL_PATH)")
    imported.add_argument(
        "--version", dest="model_version", type=_version_number, help="default: newest + 1"
    )
    imported.add_argument("--max-length", type=int, help="tokens per text (default: the model's)")
    imported.add_argument(
        "--quantize",
        choices=("int8",),
        help="a text model's weights to int8 (onnxruntime dynamic quantization), held to "
        "the fp32 original at a looser bound; faster on most CPUs, not all: measure",
    )
    imported.add_argument(
        "--trust", action="store_true", help="load a pickle (it runs code): only one you trust"
    )
    imported.add_argument(
        "--to", choices=("onnx", "skops"), help="a pickle's target (default: ONNX, else skops)"
    )
    imported.add_argument("--sample", type=Path, help="rows (.npy) to check the converted model on")
    rollback = model_commands.add_parser(
        "rollback", help="stop serving a model's newest version: every server goes back"
    )
    rollback.add_argument("name", help="the model")
    rollback.add_argument("--model-path", dest="MODEL_PATH", help="the repository (env MODEL_PATH)")

    _doctor_parser(commands)
    _keys_parser(commands)
    _drift_parser(commands)

    config = commands.add_parser("config", help="show the effective settings")
    config_commands = config.add_subparsers(
        dest="config_command", required=True, parser_class=_Parser
    )
    config_commands.add_parser("show", help="print the settings, secrets redacted")
    return parser


def _positive_rate(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1e6 or value != value:
        raise argparse.ArgumentTypeError("a number of requests a second over 0")
    return value


def _keys_parser(commands: Any) -> None:
    keys = commands.add_parser(
        "keys", help="the clients' keys (API_KEYS_FILE): add, list, revoke; no restart"
    )
    keys.add_argument("--file", help="the keys file (env API_KEYS_FILE)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    add = key_commands.add_parser("add", help="a new random key for NAME, printed once")
    add.add_argument("name")
    add.add_argument("--models", help="models it may call: names or globs, comma-separated")
    add.add_argument("--rate", type=_positive_rate, help="requests a second (default: no limit)")
    add.add_argument("--burst", type=int, help="requests at once above the rate")
    add.add_argument("--admin", action="store_true", help="it may use the repository routes")
    key_commands.add_parser("list", help="names, models, rates (never a key or digest)")
    revoke = key_commands.add_parser("revoke", help="take NAME's key out")
    revoke.add_argument("name")


def _drift_parser(commands: Any) -> None:
    drift = commands.add_parser(
        "drift", help="how far a model's inputs and outputs moved from its reference"
    )
    drift.add_argument("model")
    drift.add_argument("--logs", default="/app/logs", help="the logs folder (MLAPI_LOG_DIR)")
    drift.add_argument("--model-path", help="the repository, for a version's reference.npz")
    drift.add_argument("--version", type=_version_number, help="default: the newest logged")
    drift.add_argument("--since", help="records from this time on: 2026-12-06T08:00:00 or 2h")
    drift.add_argument("--threshold", type=float, default=0.2, help="PSI that fails (exit 1)")
    drift.add_argument("--max-features", type=int, default=32)
    drift.add_argument("--format", choices=("text", "json"), default="text")


def _doctor_parser(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="audit compose files against the guide; size them from measured models",
    )
    doctor.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        type=Path,
        help="a compose file, in merge order (default: what `docker compose` reads here)",
    )
    doctor.add_argument(
        "--model-path", type=Path, help="the models the service serves (default: bundled)"
    )
    doctor.add_argument("--env-file", type=Path, help="variables file (default: ./.env)")
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.add_argument("--write-env", type=Path, help="write the suggested values to this file")
    doctor.add_argument(
        "--no-compose",
        action="store_true",
        help="merge the files itself even when Docker Compose is installed",
    )
    doctor.add_argument("--no-measure", action="store_true", help="check the files only")
    doctor.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one model may take to load"
    )


def _doctor(args: argparse.Namespace) -> int:
    """Exit 0 without a fail, 1 with one, 2 when it could not run. The process
    environment is read here (as Compose reads it) to interpolate the files."""
    import os

    try:
        from mlapi import doctor
        from mlapi.doctor import report
    except ImportError as exc:  # the production image leaves PyYAML out
        raise ConfigError(
            f"mlapi doctor needs {exc.name}: run it where mlapi is pip-installed"
        ) from None

    options = doctor.Options(
        files=tuple(args.files or ()),
        model_path=args.model_path,
        env_file=args.env_file,
        use_compose=False if args.no_compose else None,
        measure=not args.no_measure,
        timeout_s=args.timeout,
    )
    result = doctor.run(options, os.environ)
    text = report.as_json(result) if args.format == "json" else report.as_text(result)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.write_env is not None:
        if result.sizing is None:
            raise ConfigError("--write-env needs the measurement (without --no-measure)")
        report.write_env(args.write_env, result.sizing.suggested())
        sys.stderr.write(f"mlapi doctor: wrote the suggested values to {args.write_env}\n")
    return 1 if result.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["healthcheck"]:  # run every few seconds: none of the settings stack
        from mlapi import healthcheck

        return healthcheck.main(given[1:])
    args = _parser().parse_args(given)
    if args.command in ("doctor", "keys", "drift"):  # files of their own, not the settings
        try:
            if args.command == "drift":
                from mlapi import drift_cli

                return drift_cli.main(args)
            if args.command == "keys":
                from mlapi import keys_cli

                return keys_cli.main(args)
            return _doctor(args)
        except ConfigError as exc:
            sys.stderr.write(f"mlapi: error: {exc}\n")
            return 2
    from mlapi.settings import load_settings

    try:
        overrides = {
            env: getattr(args, env)
            for _, env, _, _ in SERVE_OPTIONS
            if getattr(args, env, None) is not None
        }
        settings = load_settings(**overrides)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "models":
            if args.models_command == "list":
                return _models_list(settings)
            if args.models_command == "rollback":
                return _models_rollback(settings, args.name)
            if args.models_command == "publish":
                return _models_publish(
                    settings, args.source, args.name, args.model_version, args.strategy
                )
            if args.models_command == "import":
                return _models_import(settings, args)
            return _models_validate(settings, args.path)
        import orjson

        sys.stdout.write(
            orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return 0
    except ConfigError as exc:
        sys.stderr.write(f"mlapi: error: {exc}\n")
        return 2


def _serve(settings: Settings) -> int:
    if not settings.model_path.is_dir():
        raise ConfigError(f"invalid setting MODEL_PATH: {settings.model_path} is not a folder")
    from mlapi import server

    return server.run(settings)


def _models_list(settings: Settings) -> int:
    from mlapi.repository import scan
    from mlapi.runtimes import catalog

    try:
        entries = scan.scan(settings.model_path, settings.pinned_version)
    except Exception as exc:
        raise ConfigError(f"invalid setting MODEL_PATH: {settings.model_path}: {exc}") from None
    print(f"{'MODEL':24} {'VERSION':8} {'RUNTIME':8} FILE / PROBLEM")
    for entry in entries:
        if entry.error:
            print(f"{entry.name:24} {'-':8} {'-':8} {entry.error}")
        for version in entry.versions:
            if version.config is None:
                print(f"{entry.name:24} {version.version:<8} {'-':8} {version.error}")
                continue
            try:
                runtime, model_file = catalog.choose(version.path, version.config)
                detail = model_file.name
            except Exception as exc:
                runtime, detail = "-", str(getattr(exc, "message", exc))
            print(f"{entry.name:24} {version.version:<8} {runtime:8} {detail}")
    return 0


def _models_publish(
    settings: Settings,
    source: str,
    name: str | None,
    version: int | None,
    strategy: str | None = None,
) -> int:
    from mlapi.repository import publish

    budget = publish.Budget(settings.publish_max_bytes, settings.publish_max_files)
    if source == "-":
        if name is None:
            raise ConfigError("--name is needed when the model comes on stdin")
        final = publish.publish(
            settings.model_path,
            name,
            version,
            archive=sys.stdin.buffer,
            allow_pickle=settings.allow_pickle,
            budget=budget,
            strategy=strategy,
        )
    else:
        folder = Path(source)
        final = publish.publish(
            settings.model_path,
            name or publish.default_name(folder.resolve()),
            version,
            source=folder,
            allow_pickle=settings.allow_pickle,
            budget=budget,
            strategy=strategy,
        )
    print(f"published {final.parent.name} version {final.name} to {final}")
    return 0


def _models_import(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile

    from mlapi.importers import tabular, text
    from mlapi.repository import publish, scan

    source: Path = args.source
    if not scan.MODEL_NAME.fullmatch(args.name):
        raise ConfigError(f"--name '{args.name[:64]}' is not a model name (letters, digits, _.-)")
    if args.max_length is not None and args.max_length < 1:
        raise ConfigError("--max-length must be a positive number of tokens")
    if args.quantize and not text.is_text_folder(source):
        raise ConfigError("--quantize applies to text models (a folder with tokenizer.json)")
    if not text.is_text_folder(source) and not tabular.is_pickle(source):
        raise ConfigError(
            f"{source} is neither a sentence-transformers or Hugging Face text model folder "
            "(config.json and tokenizer.json) nor a pickle (.pkl, .joblib)"
        )
    with tempfile.TemporaryDirectory(prefix="mlapi-import-") as folder:
        staging = Path(folder) / "version"
        if text.is_text_folder(source):
            report = text.export(source, staging, args.max_length, args.quantize)
            check = (
                f"{report.task}, {report.width} wide"
                + (f", {report.quantized}" if report.quantized else "")
                + "; "
                + (
                    f"lowest cosine {report.worst:.6f}"
                    if report.task == "embedding"
                    else f"largest score difference {report.worst:.2e}"
                )
                + f" against the original on {report.samples} texts"
            )
        else:
            done = tabular.export(source, staging, args.trust, args.to, args.sample)
            for note in done.notes:
                sys.stderr.write(f"mlapi: {note}\n")
            where = "generated" if done.generated else "given"
            check = (
                f"{done.format}; largest difference {done.largest_difference:.2e} against the "
                f"original on {done.rows} {where} rows, labels equal"
            )
        final = publish.publish(
            settings.model_path, args.name, args.model_version, source=staging, allow_pickle=False
        )
    print(f"imported {source.name} as {args.name} version {final.name} ({check}) to {final}")
    return 0


def _models_rollback(settings: Settings, name: str) -> int:
    """Mark the version the policy serves now as rolled back, in the repository: each
    server (every worker, every replica on the volume) goes back to the one before
    at its next look (MLAPI_REPOSITORY_POLL_S) or load, at once if that one is still
    loaded from the switch."""
    from mlapi.repository import rollback, scan

    model_dir = settings.model_path / name
    if not scan.MODEL_NAME.fullmatch(name) or not model_dir.is_dir():
        raise ConfigError(f"no model '{name[:64]}' in {settings.model_path}")
    entry = scan.scan_model(model_dir)
    if entry.error or not entry.versions:
        raise ConfigError(f"model '{name}' has nothing to roll back: {entry.error}")
    newest = max(item.version for item in entry.versions)
    left = [v for v in entry.available if v != newest and v not in entry.rolled_back]
    if not left:
        raise ConfigError(f"model '{name}' has no other version to go back to")
    rollback.mark(model_dir, newest, "rolled back by hand (mlapi models rollback)")
    print(f"rolled back {name} version {newest}; servers go back at their next look or load")
    return 0


def _models_validate(settings: Settings, path: Path) -> int:
    import asyncio

    from mlapi.registry import ModelRegistry, State

    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder")
    checked = settings.model_copy(update={"model_path": path})
    registry = ModelRegistry(checked)

    async def load() -> None:
        registry.scan()
        await registry.load_all()
        await registry.close()

    asyncio.run(load())
    ok, details = registry.readiness()
    for item in details:
        reason = f"  {item['reason']}" if "reason" in item else ""
        print(f"{item['name']:24} {item.get('version', '-'):8} {item['state']}{reason}")
    if not details:
        print(f"no models under {path}" if not registry.scan_error else registry.scan_error)
    failed = [item for item in details if item["state"] != State.READY.value]
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
