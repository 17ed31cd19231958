"""Tests of harvester.text: one truncation, one plural, one counts sentence; and of the one
tally that several reporters watch (stats.Tally)."""

from __future__ import annotations

import io
import json

import pytest

from harvester.model import Action, Outcome
from harvester.report import JsonReporter, LogReporter
from harvester.stats import Stage, Tally
from harvester.text import ELLIPSIS, counts_sentence, cut, outcome_counts, plural
from tests.reports import file_report


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("abc", 3, "abc"), ("abcd", 3, "ab" + ELLIPSIS), ("abcd", 1, ELLIPSIS), ("abcd", 0, "")],
)
def test_cut_counts_characters_and_ends_with_one_mark(text: str, limit: int, expected: str) -> None:
    assert cut(text, limit) == expected


def test_cut_in_bytes_never_splits_a_character() -> None:
    text = "タスク" * 50
    for limit in range(200):
        out = cut(text, limit, in_bytes=True)
        assert len(out.encode("utf-8")) <= limit
        assert text.startswith(out.removesuffix(ELLIPSIS))
        assert out.endswith(ELLIPSIS) or limit < len(ELLIPSIS.encode())


def test_plural() -> None:
    assert [plural(1, "file"), plural(2, "file"), plural(0, "copy", "copies")] == [
        "1 file",
        "2 files",
        "0 copies",
    ]


def test_the_counts_sentence_names_the_lead_always_and_the_rest_when_they_happened() -> None:
    files = [
        file_report("a", Action.UPLOAD, Outcome.UPLOADED),
        file_report("b", Action.DUPLICATE, Outcome.DUPLICATE),
        file_report("c", Action.DUPLICATE, Outcome.DUPLICATE),
        file_report("d", Action.SKIP, Outcome.SKIPPED),
    ]
    counts = outcome_counts(files)
    assert counts_sentence(counts) == "1 document uploaded, 2 duplicates, 1 skipped"
    assert counts_sentence({}) == "0 documents uploaded"
    assert counts_sentence({Outcome.PLANNED: 2}, lead=Outcome.PLANNED) == "2 documents to upload"


def test_every_reporter_watching_one_tally_draws_the_same_counts() -> None:
    now = [100.0]
    tally = Tally(lambda: now[0])
    log, events = io.StringIO(), io.StringIO()
    LogReporter(log, tally)
    JsonReporter(events, tally)
    tally.stage_started(Stage.UPLOAD, 3, 3072)
    tally.advanced(Stage.UPLOAD, files=3, nbytes=3072)
    tally.file_failed("x.md", "upload failed: 500")
    now[0] += 2
    tally.stage_finished(Stage.UPLOAD)
    finished = json.loads(events.getvalue().splitlines()[-1])
    assert (finished["files_done"], finished["bytes_done"], finished["failed"]) == (3, 3072, 1)
    assert log.getvalue().splitlines()[-1] == (
        "upload finished: 3/3 files, 3.0/3.0 KiB in 2s, 1.5 KiB/s, 1 failed"
    )
