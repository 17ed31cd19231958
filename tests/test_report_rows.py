"""What is written a piece at a time reads exactly as what was built whole.

The plan printed a row at a time (`harvester.report.rows`, which writes most rows itself and
leans on rich's private width arithmetic) against the plan rich prints whole, on consoles as
`print_result` makes them: paths that fit, that fold, that are wide (CJK, emoji), that start or
end with spaces, that hold escapes; reasons longer than a line; narrow and ASCII-only consoles.
And the JSON plan and summary events written as they are encoded (`print_json_result`) against
`json_event` of `plan_to_json` and `report_to_json`.
"""

from __future__ import annotations

import io
import json
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harvester.model import (
    Action,
    FileReport,
    HarvestReport,
    Outcome,
    PlanItem,
    Receipt,
    StepResult,
    StepState,
    UploadPlan,
)
from harvester.report import json_event, plan_to_json, print_json_result, report_to_json
from harvester.report.live import console_for, write_json_event
from harvester.report.rows import print_rows
from harvester.report.summary import _plan_cells, _plan_table, _plan_totals, render_plan

SHA = "0123456789abcdef" * 4


def whole(plan: UploadPlan, console: Console) -> None:
    console.print(render_plan(plan))


def streamed(plan: UploadPlan, console: Console) -> None:
    totals = _plan_totals(plan)
    print_rows(console, lambda: _plan_table(totals), lambda: map(_plan_cells, plan.items))


def both(plan: UploadPlan, *, width: int = 80, encoding: str | None = None) -> tuple[str, str]:
    """The plan's text printed whole and a row at a time, each on a fresh log console."""
    texts = []
    for printer in (whole, streamed):
        if encoding is None:
            buffer: io.StringIO | io.TextIOWrapper = io.StringIO()
        else:
            buffer = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
        console = console_for(buffer, interactive=False)
        console.width = width
        printer(plan, console)
        if isinstance(buffer, io.TextIOWrapper):
            buffer.flush()
            texts.append(buffer.buffer.getvalue().decode(encoding or "utf-8"))  # type: ignore[attr-defined]
        else:
            texts.append(buffer.getvalue())
    return texts[0], texts[1]


def item(path: str, action: Action = Action.UPLOAD, **fields: object) -> PlanItem:
    defaults: dict[str, object] = {"size": 4096, "sha256": SHA}
    if action is Action.SKIP:
        defaults = {"size": 12, "reason": "hidden (use --include-hidden to harvest it)"}
    if action is Action.FAIL:
        defaults = {"reason": f"{path}: kept changing while it was read (3 attempts)"}
    return PlanItem(path, action, **(defaults | fields))  # type: ignore[arg-type]


CASES = {
    "short paths": [item("a.md"), item("b/c.md", Action.DUPLICATE, duplicate_of="a.md")],
    "every action": [
        item("a.md"),
        item("b.md", Action.ALREADY_UPLOADED, reason="on the server as x.md"),
        item(".env", Action.SKIP),
        item("c.md", Action.FAIL),
        item("d.md", Action.DUPLICATE, duplicate_of="a.md"),
    ],
    "a path that folds": [item("a.md"), item("deep/" * 20 + "file.md"), item("z.md")],
    "the folding path is last": [item("a.md"), item("deep/" * 20 + "file.md")],
    "a long reason wraps": [
        item("a.md"),
        item("b.md", Action.FAIL, reason="b.md: " + "the server said no, " * 12),
        item("c.md"),
    ],
    "wide and odd names": [
        item("日本語のファイル名.txt"),
        item("emoji-📄-doc.md"),
        item("e\u0301cole.md"),
        item(" leading space.md"),
        item("trailing space.md "),
        item("tab\\x09escaped.md"),
        item("x" * 30 + "日本" * 20),
    ],
    "no size, no digest": [item("a.md", Action.FAIL), item("b", Action.SKIP, size=None)],
    "huge sizes": [item("a", size=10**15), item("b", size=0), item("c", size=999)],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("width", [80, 40, 200])
def test_rows_print_the_text_rich_prints(name: str, width: int) -> None:
    expected, actual = both(UploadPlan(tuple(CASES[name])), width=width)
    assert actual == expected


def test_an_empty_plan_prints_the_header_and_totals_as_rich_does() -> None:
    expected, actual = both(UploadPlan(()))
    assert actual == expected
    assert "0 documents to upload" in actual


def test_an_ascii_only_log_gets_the_same_substituted_box() -> None:
    plan = UploadPlan(tuple(CASES["every action"]) + tuple(CASES["a path that folds"]))
    expected, actual = both(plan, encoding="ascii")
    assert actual == expected


def test_a_terminal_console_gets_the_whole_table() -> None:
    """A console that styles text is not written to by hand: the colours are rich's."""
    plan = UploadPlan((*CASES["every action"], item("[bold]not markup[/bold].md")))
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=80)
    streamed(plan, console)
    expected = io.StringIO()
    Console(file=expected, force_terminal=True, color_system="standard", width=80).print(
        _with_rows(plan)
    )
    assert out.getvalue() == expected.getvalue()
    assert "\x1b[" in out.getvalue()
    assert "[bold]not" in out.getvalue() and "markup[/bold].md" in out.getvalue()  # not markup


def _with_rows(plan: UploadPlan) -> Table:
    table = _plan_table(_plan_totals(plan))
    for cells in map(_plan_cells, plan.items):
        table.add_row(*map(Text, cells))
    return table


_NAME_CHARS = st.sampled_from(
    [*string.ascii_letters, *string.digits, " ", "-", ".", "/", "日", "本", "📄", "\u0301", "é"]
)
_ITEMS = st.lists(
    st.builds(
        item,
        st.text(_NAME_CHARS, min_size=1, max_size=90),
        st.sampled_from(list(Action)),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=_ITEMS, width=st.integers(min_value=30, max_value=160))
@example(items=[item("a"), item("b" * 200)], width=80)
def test_any_plan_prints_the_same_text_either_way(items: list[PlanItem], width: int) -> None:
    expected, actual = both(UploadPlan(tuple(items)), width=width)
    assert actual == expected


# --------------------------------------------------------------------------- JSON events


def fixed_clock() -> float:
    return 1_765_000_000.25


def report_of(plan: UploadPlan, *, dry_run: bool) -> HarvestReport:
    outcomes = {Action.UPLOAD: Outcome.UPLOADED, Action.FAIL: Outcome.FAILED}
    ids = ["doc-1", None, 'd\u00f6c "2"']
    errors = [None, "an error", "a\nline\u202e break"]
    files = tuple(
        FileReport(
            planned,
            Receipt(
                outcomes.get(planned.action, Outcome.SKIPPED), n % 4, ids[n % 3], errors[n % 3]
            ),
        )
        for n, planned in enumerate(plan.items)
    )
    done = StepResult(StepState.DONE, "set to COMPLETED: r\u00e9sum\u00e9 \u202e")
    return HarvestReport("task-1", "/.keruta/doc", dry_run, files, 1.5, 4096, done, done)


@pytest.mark.parametrize("count", [0, 1, 1023, 1024, 1025, 2500])
@pytest.mark.parametrize("dry_run", [True, False])
def test_the_json_result_written_as_encoded_is_the_line_json_event_makes(
    count: int, dry_run: bool
) -> None:
    names = ["日本.md", "a\u202eb.md", "\udcff-odd", 'q"uote\\.md', "x"]
    actions = list(Action)

    def odd_item(i: int) -> PlanItem:
        path, action = f"{i:05d}-{names[i % len(names)]}", actions[i % len(actions)]
        if action is Action.DUPLICATE:
            return item(path, action, duplicate_of=names[(i + 1) % len(names)])
        return item(path, action)

    plan = UploadPlan(tuple(odd_item(i) for i in range(count)))
    report = report_of(plan, dry_run=dry_run)
    out = io.StringIO()
    print_json_result(out, plan=plan, report=report, wall_clock=fixed_clock)

    if dry_run:
        document = plan_to_json(plan, report.task_id, report.root)
        expected = json_event("plan", wall_clock=fixed_clock, **document)
    else:
        expected = json_event("summary", wall_clock=fixed_clock, **report_to_json(report))
    assert out.getvalue() == expected + "\n"
    assert len(json.loads(out.getvalue())["items" if dry_run else "files"]) == count


def test_an_iterator_field_may_stand_anywhere_among_the_fields() -> None:
    out = io.StringIO()
    write_json_event(out, "e", wall_clock=fixed_clock, a=1, xs=iter([{"b": [2]}, 3]), c=None)
    assert (
        out.getvalue()
        == json_event("e", wall_clock=fixed_clock, a=1, xs=[{"b": [2]}, 3], c=None) + "\n"
    )
