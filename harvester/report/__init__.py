"""Everything a harvest shows or leaves for people and machines; the only importer of rich.

Takes a `Tally` to watch while a harvest runs (stats.py) and the plain results once it is over
(`UploadPlan`, `HarvestReport` from model.py); gives reporters (progress bars, plain log lines,
JSON lines), the plan and summary renderers with their JSON forms, and the `--summary-json` and
termination-message files. Callers import from here; the modules inside are:

- `text`: sizes, durations, rates, `printable()` and the failure line: text for people.
- `live`: `LogReporter`, `JsonReporter`, `json_event` and `write_json_event` (the makers of a
  JSON-lines event), `console_for`, `print_line`.
- `terminal`: `TerminalReporter` (rich progress bars), imported only when it is asked for, so
  that a run writing a log or JSON lines never loads rich's live display.
- `summary`: `render_plan`, `render_summary`, `plan_to_json`, `report_to_json`, `headline`,
  `termination_message`, `print_result`, `print_json_result`.
- `rows`: `print_rows`, a table printed a row at a time for a log (the dry-run plan).
- `files`: `write_summary_json`, `write_termination_log`.

Nothing here decides an exit code or where output goes: the caller hands in streams, consoles
and clocks.
"""

from typing import TYPE_CHECKING, Any

from harvester.report.files import TERMINATION_LOG, write_summary_json, write_termination_log
from harvester.report.live import (
    JsonReporter,
    LogReporter,
    console_for,
    json_event,
    print_line,
)
from harvester.report.summary import (
    headline,
    plan_to_json,
    print_json_result,
    print_result,
    render_plan,
    render_summary,
    report_to_json,
    termination_message,
)
from harvester.report.text import human_duration, human_size, printable

if TYPE_CHECKING:
    from harvester.report.terminal import TerminalReporter

__all__ = [
    "TERMINATION_LOG",
    "JsonReporter",
    "LogReporter",
    "TerminalReporter",
    "console_for",
    "headline",
    "human_duration",
    "human_size",
    "json_event",
    "plan_to_json",
    "print_json_result",
    "print_line",
    "print_result",
    "printable",
    "render_plan",
    "render_summary",
    "report_to_json",
    "termination_message",
    "write_summary_json",
    "write_termination_log",
]


def __getattr__(name: str) -> Any:
    # `TerminalReporter` is imported when first asked for: rich's live display costs a run that
    # only writes a log or JSON lines some 30 ms of start-up.
    if name == "TerminalReporter":
        from harvester.report.terminal import TerminalReporter

        return TerminalReporter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
