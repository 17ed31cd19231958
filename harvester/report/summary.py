"""The end of a harvest for people and machines: the plan, the summary, the termination text.

Takes the plain results of a harvest (`UploadPlan`, `HarvestReport` from model.py); gives the
dry-run plan and the final summary as rich renderables, their JSON-ready dicts (`--log-format
json`, `--summary-json`), the short text for the pod's termination message, and `print_result`,
which prints the one that fits. The sentence that opens every summary, `headline`, is written
here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _json_string
from typing import TYPE_CHECKING, Any, TextIO

from harvester.model import (
    Action,
    FileReport,
    HarvestReport,
    LedgerUse,
    Outcome,
    PlanItem,
    StepResult,
    StepState,
    UploadPlan,
)
from harvester.report.live import Encoded, console_for, write_json_event
from harvester.report.text import (
    ERROR_CHARS,
    failure_line,
    human_duration,
    human_size,
    one_line,
    printable,
    rate_text,
    without_subject,
)
from harvester.stats import Clock
from harvester.text import counts_sentence, cut, outcome_counts, plural

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

__all__ = [
    "TERMINATION_LIMIT",
    "error_message",
    "headline",
    "plan_to_json",
    "print_json_result",
    "print_result",
    "render_plan",
    "render_summary",
    "report_to_json",
    "termination_message",
]

# Kubernetes keeps only the first 4096 bytes of a container's termination message.
TERMINATION_LIMIT = 4096

# What each planned action will end as: the plan's counts said in the summary's words.
_OUTCOME_OF = {
    Action.UPLOAD: Outcome.PLANNED,
    Action.DUPLICATE: Outcome.DUPLICATE,
    Action.ALREADY_UPLOADED: Outcome.ALREADY_UPLOADED,
    Action.SKIP: Outcome.SKIPPED,
    Action.FAIL: Outcome.FAILED,
}

# The enums' values as plain strings, looked up once per file rather than through `.value`.
_VALUE: dict[Action | Outcome, str] = {member: member.value for member in (*Action, *Outcome)}

_ACTION_STYLE = {
    Action.UPLOAD: "green",
    Action.DUPLICATE: "dim",
    Action.ALREADY_UPLOADED: "dim",
    Action.SKIP: "yellow",
    Action.FAIL: "bold red",
}


def print_result(
    stream: TextIO, *, interactive: bool, plan: UploadPlan, report: HarvestReport
) -> None:
    """The end of a run for people: the plan table after a dry run, else the summary."""
    # Imported here, as rich is in each renderer below: a run that ends in JSON never loads it.
    from harvester.report.rows import print_rows

    console = console_for(stream, interactive=interactive)
    if report.dry_run and not interactive:
        # A log gets the same text a row at a time: a plan can hold a million paths.
        totals = _plan_totals(plan)
        print_rows(console, lambda: _plan_table(totals), lambda: map(_plan_cells, plan.items))
    else:
        console.print(render_plan(plan) if report.dry_run else render_summary(report))


# --------------------------------------------------------------------------- the plan


def _action_phrase(action: Action, duplicate_of: str | None, reason: str | None) -> str:
    match action:
        case Action.UPLOAD:
            return "upload"
        case Action.DUPLICATE:
            return f"duplicate of {printable(duplicate_of or '?')}"
        case Action.ALREADY_UPLOADED:
            return f"already uploaded: {one_line(reason)}" if reason else "already uploaded"
        case Action.SKIP:
            return f"skipped: {one_line(reason or 'no reason given')}"
        case Action.FAIL:
            return f"failed: {one_line(reason or 'no reason given')}"
    raise AssertionError(f"unknown action {action!r}")


def _plan_counts(plan: UploadPlan) -> tuple[dict[Action, int], int]:
    """How many items have each action, and the bytes to upload: one pass over the plan."""
    counts = dict.fromkeys(Action, 0)
    upload_bytes = 0
    for item in plan.items:
        counts[item.action] += 1
        if item.action is Action.UPLOAD:
            upload_bytes += item.size or 0
    return counts, upload_bytes


def _plan_totals(plan: UploadPlan) -> str:
    counts, upload_bytes = _plan_counts(plan)
    outcomes = {_OUTCOME_OF[action]: n for action, n in counts.items()}
    sentence = counts_sentence(outcomes, lead=Outcome.PLANNED)
    return f"{sentence}; {human_size(upload_bytes)} to send"


def _plan_table(totals: str, width: int | None = None) -> Table:
    """The plan's table without rows: its columns and, as caption, the totals."""
    from rich import box  # here: only a plan for people needs rich (see print_result)
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        width=width,
        caption=totals,
        caption_justify="left",
        header_style="bold",
    )
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("action", overflow="fold")
    return table


def _plan_cells(item: PlanItem) -> tuple[str, str, str, str]:
    """One plan row as text: path, size, sha256 (first 12 hex), action."""
    return (
        printable(item.rel_path),
        "-" if item.size is None else human_size(item.size),
        item.sha256[:12] if item.sha256 else "-",
        _action_phrase(item.action, item.duplicate_of, item.reason),
    )


def render_plan(plan: UploadPlan, *, width: int | None = None) -> Table:
    """The `--dry-run` table: path, size, sha256 (first 12 hex), action; totals as caption."""
    from rich.text import Text  # here: only a plan for people needs rich (see print_result)

    table = _plan_table(_plan_totals(plan), width)
    for item in plan.items:
        path, size, sha256, action = _plan_cells(item)
        table.add_row(
            Text(path),
            Text(size),
            Text(sha256, style="dim"),
            Text(action, style=_ACTION_STYLE[item.action]),
        )
    return table


def _plan_item_to_json(item: PlanItem) -> dict[str, Any]:
    return {
        "path": item.rel_path,
        "size": item.size,
        "sha256": item.sha256,
        "action": _VALUE[item.action],
        "duplicate_of": item.duplicate_of,
        "reason": item.reason,
    }


def _null_or_json(text: str | None) -> str:
    return "null" if text is None else _json_string(text)


def _plan_item_text(item: PlanItem) -> str:
    """`_plan_item_to_json(item)` as the encoder writes it (the tests hold the two equal),
    formatted directly: a dry run of 100,000 paths wrote its plan in a third of the time."""
    size, sha256 = item.size, item.sha256
    return _PLAN_ITEM_TEXT % (
        _json_string(item.rel_path),
        "null" if size is None else size,
        "null" if sha256 is None else _json_string(sha256),
        _VALUE[item.action],
        _null_or_json(item.duplicate_of),
        _null_or_json(item.reason),
    )


def _file_text(f: FileReport) -> str:
    """`_file_to_json(f)` as the encoder writes it, formatted directly like `_plan_item_text`
    (the tests hold the two equal): the summary of 10,000 files is the last thing a harvest
    does before it exits."""
    receipt = f.receipt
    return _FILE_TEXT % (
        _plan_item_text(f.item)[:-1],
        _VALUE[receipt.outcome],
        _null_or_json(receipt.document_id),
        _null_or_json(receipt.error),
        receipt.attempts,
    )


_PLAN_ITEM_TEXT = '{"path":%s,"size":%s,"sha256":%s,"action":"%s","duplicate_of":%s,"reason":%s}'
_FILE_TEXT = '%s,"outcome":"%s","document_id":%s,"error":%s,"attempts":%d}'


def _plan_fields(
    plan: UploadPlan, task_id: str, root: str, items: Iterable[dict[str, Any]] | Encoded
) -> dict[str, Any]:
    counts, upload_bytes = _plan_counts(plan)
    return {
        "task_id": task_id,
        "root": root,
        "dry_run": True,
        "counts": {action.value: counts[action] for action in Action},
        "upload_bytes": upload_bytes,
        "items": items,
    }


def plan_to_json(plan: UploadPlan, task_id: str, root: str) -> dict[str, Any]:
    """The plan for `--dry-run --log-format json`: totals and every item, in path order."""
    return _plan_fields(plan, task_id, root, [_plan_item_to_json(item) for item in plan.items])


def print_json_result(
    stream: TextIO, *, plan: UploadPlan, report: HarvestReport, wall_clock: Clock = time.time
) -> None:
    """The end of a run for machines (`--log-format json`): the `plan` event after a dry run
    (`plan_to_json`), else the `summary` event (`report_to_json`), as one line written while
    it is encoded, so the paths are never all held as JSON at once."""
    if report.dry_run:
        items = Encoded(map(_plan_item_text, plan.items))
        fields = _plan_fields(plan, report.task_id, report.root, items)
        write_json_event(stream, "plan", wall_clock=wall_clock, **fields)
    else:
        files = Encoded(map(_file_text, report.files))
        write_json_event(stream, "summary", wall_clock=wall_clock, **_report_fields(report, files))


# --------------------------------------------------------------------------- the summary


def headline(report: HarvestReport) -> str:
    """One sentence on how the harvest ended, subject first, with what to do about it."""
    subject = f"task {report.task_id}"
    failed = len(report.failures)
    kept = report.pvc.state is not StepState.DONE
    if report.auth_rejected:
        return (
            f"{subject}: harvest stopped: keruta-api rejected the token (401/403); "
            "check KERUTA_API_TOKEN or --token-file and that the token may write this task"
        )
    if report.interrupted:
        if any(_another_run_helps(f) for f in report.failures):
            return (
                f"{subject}: harvest interrupted before it finished; run it again to send the rest"
            )
        if failed:
            return (
                f"{subject}: harvest interrupted; {plural(failed, 'file')} not harvested; "
                "fix the causes below and run it again"
            )
        if report.status.state is not StepState.DONE:
            return (
                f"{subject}: harvest interrupted after every upload finished; "
                "run it again to set the task status"
            )
    if failed:
        # "Send the rest" only when a run as it stands would: a rejected file needs a fix first.
        todo = (
            "run it again to send the rest"
            if all(_another_run_helps(f) for f in report.failures)
            else "fix the causes below and run it again"
        )
        tail = f"; {todo}" + (" (the volume was kept)" if kept else "")
        return f"{subject}: harvest incomplete: {plural(failed, 'file')} not harvested{tail}"
    if report.dry_run:
        planned = report.count(Outcome.PLANNED)
        return f"{subject}: dry run, nothing was sent; {plural(planned, 'file')} would be uploaded"
    if report.status.state is StepState.FAILED:
        return f"{subject}: documents harvested, but the task status update failed"
    if report.pvc.state in (StepState.FAILED, StepState.REFUSED):
        return f"{subject}: documents harvested and status set, but the PVC was not deleted"
    return f"{subject}: harvest done"


def _another_run_helps(f: FileReport) -> bool:
    """Whether running again as it stands could harvest `f`: it was never tried, or it was tried
    more than once (only transient failures are retried: 5xx, timeouts, a file being written)."""
    return f.outcome is Outcome.NOT_ATTEMPTED or (f.outcome is Outcome.FAILED and f.attempts > 1)


def _headline_style(report: HarvestReport) -> str:
    if report.auth_rejected or report.failures or report.status.state is StepState.FAILED:
        return "bold red"
    if report.interrupted or report.pvc.state in (StepState.FAILED, StepState.REFUSED):
        return "bold yellow"
    return "bold green"


def _step_text(step: StepResult, limit: int = 2 * ERROR_CHARS) -> str:
    return f"{step.state.value}: {one_line(step.message, limit)}"


def _average_rate(report: HarvestReport) -> float | None:
    if report.elapsed_seconds <= 0 or report.bytes_uploaded <= 0:
        return None
    return report.bytes_uploaded / report.elapsed_seconds


def _bytes_of(report: HarvestReport, outcome: Outcome) -> int:
    return sum(f.size or 0 for f in report.files if f.outcome is outcome)


def _failure_error(f: FileReport, limit: int = ERROR_CHARS) -> str:
    """The error of a failed file, without the path that the table already shows."""
    if f.error:
        return one_line(without_subject(f.path, f.error), limit)
    if f.outcome is Outcome.NOT_ATTEMPTED:
        return "not attempted: the run stopped first"
    return "failed (no error recorded)"


def render_summary(report: HarvestReport, *, max_failures: int = 20) -> Group:
    """The final summary for people: outcome, counts, steps, then the failed files.

    Fits any console of 80 columns or more (long paths and errors wrap or are cut); paths and
    messages are printed as text, never as rich markup.
    """
    # Here: only a summary for people needs rich (see print_result).
    from rich import box
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = [
        Text(printable(headline(report)), style=_headline_style(report)),
        Text(""),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        (
            "uploaded",
            f"{report.count(Outcome.UPLOADED)} ({human_size(report.bytes_uploaded)})",
        ),
    ]
    if report.dry_run or report.count(Outcome.PLANNED):
        planned = report.count(Outcome.PLANNED)
        rows.append(("planned", f"{planned} ({human_size(_bytes_of(report, Outcome.PLANNED))})"))
    rows += [
        ("duplicates", str(report.count(Outcome.DUPLICATE))),
        ("already uploaded", _already_uploaded_text(report)),
        ("skipped", str(report.count(Outcome.SKIPPED))),
        ("failed", str(report.count(Outcome.FAILED))),
        ("not attempted", str(report.count(Outcome.NOT_ATTEMPTED))),
        ("elapsed", human_duration(report.elapsed_seconds)),
        ("average rate", rate_text(_average_rate(report))),
        ("status update", _step_text(report.status)),
        ("PVC", _step_text(report.pvc)),
    ]
    if report.ledger is not None:
        rows.append(("ledger", _ledger_text(report.ledger)))
    for key, value in rows:
        grid.add_row(Text(key), Text(value))
    parts.append(grid)

    failures = report.failures
    if failures:
        parts += [Text(""), Text(f"Failed files ({len(failures)})", style="bold red")]
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False)
        table.add_column("path", overflow="fold", ratio=2)
        table.add_column("error", overflow="fold", ratio=3)
        for f in failures[:max_failures]:
            table.add_row(Text(printable(f.path)), Text(_failure_error(f), style="red"))
        parts.append(table)
        if len(failures) > max_failures:
            parts.append(
                Text(f"... and {len(failures) - max_failures} more; all are in --summary-json")
            )
    if report.notes:
        parts += [Text(""), Text("Notes", style="bold")]
        parts += [Text(f"- {one_line(note, 2 * ERROR_CHARS)}") for note in report.notes]
    return Group(*parts)


def _already_uploaded_text(report: HarvestReport) -> str:
    """How many files were already uploaded, and who knew: the ledger or keruta-api."""
    total = report.count(Outcome.ALREADY_UPLOADED)
    if not total or report.ledger is None or report.ledger.where is None:
        return str(total)
    ledger = report.already_uploaded_from_ledger
    return f"{total} ({ledger} recorded in the ledger, {total - ledger} on the server)"


def _ledger_text(ledger: LedgerUse) -> str:
    if ledger.where is None:
        return ledger.note
    return f"{ledger.where}: {ledger.note}; {ledger.read} entries read, {ledger.written} written"


def _ledger_to_json(report: HarvestReport) -> dict[str, Any] | None:
    ledger = report.ledger
    if ledger is None:
        return None
    return {
        "where": ledger.where,
        "note": ledger.note,
        "entries_read": ledger.read,
        "entries_written": ledger.written,
    }


def _file_to_json(f: FileReport) -> dict[str, Any]:
    """The plan item's fields, then what became of it."""
    receipt = f.receipt
    return {
        **_plan_item_to_json(f.item),
        "outcome": _VALUE[receipt.outcome],
        "document_id": receipt.document_id,
        "error": receipt.error,
        "attempts": receipt.attempts,
    }


def _report_fields(
    report: HarvestReport, files: Iterable[dict[str, Any]] | Encoded
) -> dict[str, Any]:
    counts = outcome_counts(report.files)
    from_ledger = report.already_uploaded_from_ledger
    return {
        "task_id": report.task_id,
        "root": report.root,
        "dry_run": report.dry_run,
        "elapsed_seconds": round(report.elapsed_seconds, 3),
        "bytes_uploaded": report.bytes_uploaded,
        "counts": {outcome.value: counts[outcome] for outcome in Outcome},
        "status": {"state": report.status.state.value, "message": report.status.message},
        "pvc": {"state": report.pvc.state.value, "message": report.pvc.message},
        "auth_rejected": report.auth_rejected,
        "interrupted": report.interrupted,
        "notes": list(report.notes),
        "already_uploaded_from": {
            "ledger": from_ledger,
            "server": counts[Outcome.ALREADY_UPLOADED] - from_ledger,
        },
        "ledger": _ledger_to_json(report),
        "files": files,
    }


def report_to_json(report: HarvestReport) -> dict[str, Any]:
    """The machine-readable summary (`--summary-json`): every field of the report, plain JSON."""
    return _report_fields(report, [_file_to_json(f) for f in report.files])


# --------------------------------------------------------------------------- termination message


def termination_message(
    report: HarvestReport, limit: int = TERMINATION_LIMIT, *, max_failures: int = 5
) -> str:
    """A short summary for /dev/termination-log: at most `limit` bytes of UTF-8.

    The most useful lines come first, since Kubernetes keeps only the start: the outcome, the
    counts, the status and PVC steps, then the first failures.
    """
    sent = f"{human_size(report.bytes_uploaded)} sent in {human_duration(report.elapsed_seconds)}"
    lines = [
        printable(headline(report)),
        f"{counts_sentence(report)}; {sent}",
        f"status update: {_step_text(report.status, ERROR_CHARS)}",
        f"PVC: {_step_text(report.pvc, ERROR_CHARS)}",
    ]
    failures = report.failures
    lines += [failure_line(f.path, _failure_error(f)) for f in failures[:max_failures]]
    if len(failures) > max_failures:
        lines.append(f"... and {len(failures) - max_failures} more failed")
    return cut("\n".join(lines) + "\n", limit, in_bytes=True)


def error_message(message: str, limit: int = TERMINATION_LIMIT) -> str:
    """The termination message of a run that could not start: `error: <message>`."""
    return cut(f"error: {printable(message)}\n", limit, in_bytes=True)
