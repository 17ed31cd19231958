"""The command line: flags and environment variables wired to settings and runners, nothing else.

`harvester` and `keruta-agent` are the same program, so the seed's cleanup Job command
`keruta-agent cleanup --task-id ... --api-url ... --source-pod ...` works unchanged.
"""

from __future__ import annotations

import gc
import inspect
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from harvester import __version__
from harvester.errors import ConfigError
from harvester.exitcodes import ExitCode
from harvester.run import Output, fail, run_cleanup, stop_on_signals
from harvester.settings import (
    TOKEN_ENV,
    TOKEN_FILE,
    WATCH_SHARED,
    ClusterAccess,
    ControllerSettings,
    Flag,
    LogFormat,
    Reporting,
    Settings,
    WatchSettings,
    flags_of,
    read_token,
)

app = typer.Typer(
    help="Harvest a keruta task's documents from its volume into keruta-api.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _typer_option(flag: Flag) -> Any:
    return typer.Option(
        *flag.names,
        help=flag.help,
        envvar=flag.envvar,
        show_envvar=bool(flag.envvar),
        min=flag.low,
        max=flag.high,
        case_sensitive=False,
    )


def _parameter(name: str, flag: Flag) -> inspect.Parameter:
    """The typer parameter of one flag: its type and default are those a person types."""
    typed = flag.typed
    kind: Any
    default: Any = typed
    if isinstance(typed, tuple):
        kind, default = list[str] | None, None  # repeatable
    elif typed is None:
        kind = Path | None  # the optional paths: --summary-json, --ca-cert, --token-file
    else:
        kind = type(typed)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, _typer_option(flag)],
    )


def _with_flags(*sources: tuple[str, Flag]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the flags of `sources` as its signature, so typer builds them from the
    settings' fields: each option's flag, environment variable, default and help said once."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [_parameter(name, flag) for name, flag in sources]
        )
        return command

    return decorate


@app.command()
@_with_flags(*flags_of(Settings), ("token_file", TOKEN_FILE), *flags_of(Reporting))
def cleanup(**typed: Any) -> None:
    """Harvest the documents folder into keruta-api, set the task status, release the PVC.

    Exit codes: 0 done, 2 bad usage or configuration, 3 some uploads failed, 4 status update
    failed, 5 PVC deletion failed or refused, 6 authentication rejected, 1 anything unexpected.
    The token comes from KERUTA_API_TOKEN or --token-file, never from a flag.
    """
    output = Output(reporting=Reporting(**_values(Reporting, typed)))
    try:
        values = _values(Settings, typed)
        dry_run = values["dry_run"]
        token_file = TOKEN_FILE.value(typed["token_file"])
        settings = Settings(
            **values,
            token=None if dry_run else read_token(token_file, os.environ.get(TOKEN_ENV)),
            # A dry run changes nothing in the cluster; it reaches one only to read the ledger.
            cluster=(
                ClusterAccess()
                if dry_run and values["no_ledger"]
                else ClusterAccess.from_environment(os.environ)
            ),
        )
        if settings.own_pod is None:
            # In a pod the hostname is the pod's name, should the downward API not say.
            settings = replace(settings, own_pod=socket.gethostname())
    except ConfigError as exc:
        fail(output, str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    with stop_on_signals() as stop:
        code, _harvest = run_cleanup(settings, output, stop=stop)
    raise typer.Exit(code)


def _values(cls: type, typed: dict[str, Any]) -> dict[str, Any]:
    """The fields of `cls` that were given flags, from what was typed, each parsed by its flag
    (ConfigError if bad)."""
    return {name: flag.value(typed[name]) for name, flag in flags_of(cls) if name in typed}


@app.command()
@_with_flags(
    *((name, flag) for name, flag in flags_of(Settings) if name in WATCH_SHARED),
    *flags_of(WatchSettings),
    ("token_file", TOKEN_FILE),
    *flags_of(Reporting),
)
def watch(**typed: Any) -> None:
    """Upload documents as they are written, beside the main container (a native sidecar).

    At start, uploads what is there and not yet held; then each file once its size and mtime
    held still for --settle (at once when renamed into place); on SIGTERM, a final pass and the
    summary. Never sets the task status, never touches the PVC. Exit codes: 0 every document
    seen was uploaded, 2 bad usage or configuration, 3 some were not, 6 authentication rejected,
    1 anything unexpected.
    """
    output = Output(reporting=Reporting(**_values(Reporting, typed)))
    try:
        harvest = Settings(
            **_values(Settings, typed),
            token=read_token(TOKEN_FILE.value(typed["token_file"]), os.environ.get(TOKEN_ENV)),
            deadline=None,  # a sidecar runs as long as its task; each request has --timeout
            keep_pvc=True,
            cluster=ClusterAccess.from_environment(os.environ),
        )
        settings = WatchSettings(harvest=harvest, **_values(WatchSettings, typed))
    except ConfigError as exc:
        fail(output, str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    from harvester.watching import run_watch

    with stop_on_signals() as end:
        code = run_watch(settings, output, end=end)
    raise typer.Exit(code)


@app.command()
@_with_flags(*flags_of(ControllerSettings), ("token_file", TOKEN_FILE), *flags_of(Reporting))
def controller(**typed: Any) -> None:
    """Start the cleanup Job of each keruta main Job that succeeds; never of one that fails.

    Watches batch/v1 Jobs (label app=keruta by default); on Complete=True it creates
    cleanup-job-for-task-<task> from the template ConfigMap, and records the decision on the
    main Job (annotation harvester.keruta.io/cleanup-job; remove it to decide again).
    """
    output = Output(reporting=Reporting(**_values(Reporting, typed)))
    try:
        values = _values(ControllerSettings, typed)
        token_file = TOKEN_FILE.value(typed["token_file"])
        settings = ControllerSettings(
            **values,
            token=(
                read_token(token_file, os.environ.get(TOKEN_ENV))
                if values["report_failed"]
                else None
            ),
            cluster=ClusterAccess.from_environment(os.environ),
        )
    except ConfigError as exc:
        fail(output, str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    from harvester.controller.runner import run_controller

    with stop_on_signals() as stop:
        code = run_controller(
            settings, output.reporting, stop=stop, stdout=output.stdout, stderr=output.stderr
        )
    raise typer.Exit(code)


@app.command("dev-api")
def dev_api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where documents are stored (default: a temporary folder).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="KERUTA_API_TOKEN", help="Require this Bearer token (401 without it)."),
    ] = None,
    latency: Annotated[
        float, typer.Option(help="Seconds added to every answer (a remote API).", min=0)
    ] = 0.0,
    listing: Annotated[
        bool,
        typer.Option(
            "--listing/--no-listing",
            help="Serve the task's document listing (--no-listing: 404, as a keruta-api "
            "without it).",
        ),
    ] = True,
    idempotency: Annotated[
        bool,
        typer.Option(
            "--idempotency/--no-idempotency",
            help="Honour Idempotency-Key (--no-idempotency: a repeated upload is stored again).",
        ),
    ] = True,
) -> None:
    """Serve a small keruta-api stand-in that stores what it receives."""
    serve_dev_api = _dev_api_stack("dev-api").serve_dev_api
    serve_dev_api(
        host=host,
        port=port,
        data_dir=data_dir,
        token=token,
        latency=latency,
        listing=listing,
        idempotency=idempotency,
    )


@app.command()
def demo(
    root: Annotated[
        Path | None, typer.Option(help="Documents tree to harvest (default: examples/doc).")
    ] = None,
) -> None:
    """Start dev-api on loopback, harvest the sample documents, show what the server got."""
    raise typer.Exit(_dev_api_stack("demo").run_demo(root))


# The dev-api's server stack is the `dev-api` extra of pyproject.toml, left out of the cleanup
# image; these are the top-level modules it brings.
DEV_API_EXTRA = "dev-api"
DEV_API_STACK = frozenset({"starlette", "uvicorn", "uvloop", "python_multipart"})


def _dev_api_stack(command: str) -> ModuleType:
    """`harvester.devapi.demo`, imported only by the commands that serve (so `--help` and
    `cleanup` never load a web server), or exit 2 saying which extra to install."""
    try:
        from harvester.devapi import demo
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in DEV_API_STACK:
            raise
        fail(
            Output(),
            f"harvester {command}: needs the dev-api's server stack, but {missing} is not "
            f"installed; install the {DEV_API_EXTRA} extra "
            f"(pip install 'keruta-harvester[{DEV_API_EXTRA}]', or '.[{DEV_API_EXTRA}]' "
            "in a checkout)",
        )
        raise typer.Exit(ExitCode.USAGE) from None
    return demo


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"keruta-harvester {__version__}")


def main() -> None:
    """Run the CLI. A wrong flag is one sentence, like any other configuration mistake (exit 2,
    a JSON error event with --log-format json), rather than typer's framed panel."""
    args = sys.argv[1:]
    if not args:
        app()  # typer's own help
        return
    try:
        code = app(args=args, standalone_mode=False)
    except typer.TyperException as exc:
        message = " ".join(exc.format_message().split()).rstrip(".")
        context = getattr(exc, "ctx", None)
        if context is not None:
            message += f"; see '{context.command_path} --help'"
        fail(Output(reporting=Reporting(log_format=_log_format_asked(args))), message)
        raise SystemExit(exc.exit_code) from None
    # The process ends now. Frozen, its objects are not walked once more by the collection that
    # the interpreter's shutdown runs: after a harvest of 10,000 files that walk was 30 of the
    # 37 ms between the last line written and the exit.
    gc.freeze()
    raise SystemExit(code if isinstance(code, int) else ExitCode.OK)


def _log_format_asked(args: list[str]) -> LogFormat:
    """The --log-format of a command line that could not be parsed: the last one given, else
    its environment variable, else text."""
    flag = Reporting.__dataclass_fields__["log_format"].metadata["flag"]
    value = os.environ.get(flag.envvar or "", "")
    for arg, following in zip(args, [*args[1:], ""], strict=True):
        if arg in flag.names:
            value = following
        elif arg.startswith(tuple(f"{name}=" for name in flag.names)):
            value = arg.partition("=")[2]
    return LogFormat.JSON if value.lower() == LogFormat.JSON.value else LogFormat.TEXT
