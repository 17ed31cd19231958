"""The newcomer's first command, and the foreground dev-api.

`run_demo` takes a documents tree (the bundled `examples/doc` by default); it starts dev-api on a
free loopback port, runs the real harvest pipeline against it with the real progress output, shows
what the server received and the task's final status, then harvests again to show that a re-run
stores nothing twice. `serve_dev_api` runs `harvester dev-api` in the foreground.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harvester.devapi.server import DevApiServer, serve_forever
from harvester.exitcodes import ExitCode
from harvester.harvest import run_harvest
from harvester.model import Outcome
from harvester.report import human_size
from harvester.run import Output, run_cleanup
from harvester.settings import Reporting, Settings
from harvester.stats import NullListener

DEMO_TASK_ID = "demo-123"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "doc"


def run_demo(root: Path | None = None, *, console: Console | None = None) -> int:
    """Harvest `root` into a throwaway dev-api and show the result; returns the exit code."""
    console = console or Console()
    root = root or EXAMPLES
    if not root.is_dir():
        console.print(
            f"error: {root}: no documents tree here; pass --root PATH "
            "(the bundled examples/doc ships with the source tree, not the wheel)",
            style="bold red",
            markup=False,
        )
        return ExitCode.USAGE

    with (
        tempfile.TemporaryDirectory(prefix="keruta-dev-api-") as data_dir,
        DevApiServer(Path(data_dir)) as server,
    ):
        console.rule("[bold]keruta-harvester demo")
        console.print(
            f"dev-api, a keruta-api stand-in, listens on [cyan]{server.url}[/] "
            f"and stores into {data_dir}.\n"
            f"The cleanup Job would now run:\n"
            f"  [green]harvester cleanup --task-id {DEMO_TASK_ID} --api-url {server.url} "
            f"--root {root}[/]\n"
            "(the volume step is skipped: there is no Kubernetes cluster here).\n",
            highlight=False,
        )
        settings = Settings(task_id=DEMO_TASK_ID, api_url=server.url, root=str(root), keep_pvc=True)
        code, _harvest = run_cleanup(
            settings, Output(reporting=Reporting(progress_interval=1.0)), kubernetes=False
        )

        console.print()
        console.rule("[bold]What keruta-api received")
        documents = server.store.documents(DEMO_TASK_ID)
        table = Table("path", "size", "sha256", "id", title=f"task {DEMO_TASK_ID}")
        for document in documents:
            table.add_row(
                document.path,
                human_size(document.size),
                document.sha256[:12],
                document.id[:8],
            )
        console.print(table)
        task = server.store.task(DEMO_TASK_ID)
        if task is not None:
            console.print(
                f"Task status: [bold]{task.status}[/] (progress {task.progress}) — {task.message}",
                highlight=False,
            )

        console.print()
        console.rule("[bold]Harvest again, as a retried Job would")
        again = run_harvest(settings, NullListener()).report
        console.print(
            f"Second run: {again.count(Outcome.UPLOADED)} uploaded, "
            f"{again.count(Outcome.ALREADY_UPLOADED)} already on the server. "
            f"dev-api still holds {len(server.store.documents(DEMO_TASK_ID))} documents.",
            highlight=False,
        )
        console.print(
            "\nNext: [green]harvester cleanup --help[/], or point it at your own "
            "tree with [green]harvester demo --root PATH[/].",
            highlight=False,
        )
    return code


def serve_dev_api(
    *,
    host: str,
    port: int,
    data_dir: Path | None,
    token: str | None,
    latency: float,
    listing: bool = True,
    idempotency: bool = True,
) -> None:
    """Run dev-api in the foreground until Ctrl-C, telling the person where it listens."""
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="keruta-dev-api-") as scratch:
        folder = data_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)

        def ready(url: str) -> None:
            auth = "Bearer token required" if token else "no token required"
            console.print(
                f"dev-api listening on {url} ({auth}); documents go to {folder}. Ctrl-C stops.",
                highlight=False,
                markup=False,
            )

        serve_forever(
            host,
            port,
            folder,
            token=token,
            latency=latency,
            on_ready=ready,
            listing=listing,
            idempotency=idempotency,
        )
