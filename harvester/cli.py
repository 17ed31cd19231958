"""The command line: flags and environment variables wired to settings and runners, nothing else.

`harvester` and `keruta-agent` are the same program, so the seed's cleanup Job command
`keruta-agent cleanup --task-id ... --api-url ... --source-pod ...` works unchanged.
"""

from __future__ import annotations

import os
import socket
import sys
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from harvester import __version__
from harvester.errors import ConfigError
from harvester.exitcodes import ExitCode
from harvester.run import Output, fail, run_cleanup, stop_on_signals
from harvester.settings import (
    DEFAULT_DOCUMENTS_PATH,
    DEFAULT_ROOT,
    DEFAULT_STATUS_PATH,
    OPTIONS,
    ClusterAccess,
    Settings,
    megabytes,
    parse_duration,
    read_token,
)
from harvester.stats import Level

app = typer.Typer(
    help="Harvest a keruta task's documents from its volume into keruta-api.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _opt(
    name: str,
    *flags: str,
    min: float | None = None,
    max: float | None = None,
    case_sensitive: bool = True,
) -> Any:
    """A typer option whose help and environment variable come from `settings.OPTIONS`."""
    option = OPTIONS[name]
    return typer.Option(
        *flags,
        help=option.help,
        envvar=option.envvar,
        show_envvar=bool(option.envvar),
        min=min,
        max=max,
        case_sensitive=case_sensitive,
    )


@app.command()
def cleanup(
    task_id: Annotated[str, _opt("task_id", "--task-id")] = "",
    api_url: Annotated[str, _opt("api_url", "--api-url")] = "",
    source_pod: Annotated[str | None, _opt("source_pod", "--source-pod")] = None,
    pvc: Annotated[str | None, _opt("pvc", "--pvc")] = None,
    keep_pvc: Annotated[bool, _opt("keep_pvc", "--keep-pvc")] = False,
    namespace: Annotated[str | None, _opt("namespace", "--namespace", "-n")] = None,
    own_pod: Annotated[str | None, _opt("own_pod", "--pod-name")] = None,
    force_delete_pvc: Annotated[bool, _opt("force_delete_pvc", "--force-delete-pvc")] = False,
    release_pvc_finalizer: Annotated[
        bool, _opt("release_pvc_finalizer", "--release-pvc-finalizer")
    ] = False,
    root: Annotated[str, _opt("root", "--root")] = DEFAULT_ROOT,
    dry_run: Annotated[bool, _opt("dry_run", "--dry-run")] = False,
    concurrency: Annotated[int, _opt("concurrency", "--concurrency", min=1, max=256)] = 8,
    include: Annotated[list[str] | None, _opt("include", "--include")] = None,
    exclude: Annotated[list[str] | None, _opt("exclude", "--exclude")] = None,
    include_hidden: Annotated[bool, _opt("include_hidden", "--include-hidden")] = False,
    keep_duplicates: Annotated[bool, _opt("keep_duplicates", "--keep-duplicates")] = False,
    max_file_size: Annotated[float, _opt("max_file_size", "--max-file-size")] = 100.0,
    timeout: Annotated[str, _opt("timeout", "--timeout")] = "30s",
    retries: Annotated[int, _opt("retries", "--retries", min=0)] = 3,
    deadline: Annotated[str, _opt("deadline", "--deadline")] = "1h",
    token_file: Annotated[Path | None, _opt("token_file", "--token-file")] = None,
    summary_json: Annotated[Path | None, _opt("summary_json", "--summary-json")] = None,
    log_format: Annotated[LogFormat, _opt("log_format", "--log-format")] = LogFormat.text,
    progress_interval: Annotated[
        float, _opt("progress_interval", "--progress-interval", min=0.1)
    ] = 5.0,
    log_level: Annotated[Level, _opt("log_level", "--log-level", case_sensitive=False)] = (
        Level.INFO
    ),
    documents_path: Annotated[
        str, _opt("documents_path", "--documents-path")
    ] = DEFAULT_DOCUMENTS_PATH,
    status_path: Annotated[str, _opt("status_path", "--status-path")] = DEFAULT_STATUS_PATH,
) -> None:
    """Harvest the documents folder into keruta-api, set the task status, release the PVC.

    Exit codes: 0 done, 2 bad usage or configuration, 3 some uploads failed, 4 status update
    failed, 5 PVC deletion failed or refused, 6 authentication rejected, 1 anything unexpected.
    The token comes from KERUTA_API_TOKEN or --token-file, never from a flag.
    """
    output = Output(
        log_format=log_format.value, progress_interval=progress_interval, log_level=log_level
    )
    try:
        settings = Settings(
            task_id=task_id,
            api_url=api_url,
            token=None if dry_run else read_token(token_file, os.environ.get("KERUTA_API_TOKEN")),
            root=root,
            source_pod=source_pod or None,
            pvc=pvc or None,
            keep_pvc=keep_pvc,
            # A dry run changes nothing in the cluster, so it does not need to reach one.
            cluster=ClusterAccess() if dry_run else ClusterAccess.from_environment(os.environ),
            namespace=namespace or None,
            # In a pod the hostname is the pod's name, should the downward API not say.
            own_pod=own_pod or socket.gethostname(),
            force_delete_pvc=force_delete_pvc,
            release_pvc_finalizer=release_pvc_finalizer,
            dry_run=dry_run,
            concurrency=concurrency,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            include_hidden=include_hidden,
            keep_duplicates=keep_duplicates,
            max_file_size=megabytes(max_file_size),
            timeout=parse_duration(timeout, what="--timeout"),
            retries=retries,
            deadline=parse_duration(deadline, what="--deadline") or None,
            summary_json=summary_json,
            documents_path=documents_path,
            status_path=status_path,
        )
    except ConfigError as exc:
        fail(output, str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    with stop_on_signals() as stop:
        code, _harvest = run_cleanup(settings, output, stop=stop)
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
) -> None:
    """Serve a small keruta-api stand-in that stores what it receives."""
    serve_dev_api = _dev_api_stack("dev-api").serve_dev_api
    serve_dev_api(host=host, port=port, data_dir=data_dir, token=token, latency=latency)


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
DEV_API_STACK = frozenset({"starlette", "uvicorn", "httptools", "uvloop", "python_multipart"})


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
        fail(Output(log_format=_log_format_asked(args).value), message)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else ExitCode.OK)


def _log_format_asked(args: list[str]) -> LogFormat:
    """The --log-format of a command line that could not be parsed: the last one given, else
    KERUTA_LOG_FORMAT, else text."""
    value = os.environ.get(OPTIONS["log_format"].envvar or "", "")
    for flag, following in zip(args, [*args[1:], ""], strict=True):
        if flag == "--log-format":
            value = following
        elif flag.startswith("--log-format="):
            value = flag.partition("=")[2]
    return LogFormat.json if value == LogFormat.json.value else LogFormat.text
