"""Plain-text facts that several packages say: one truncation, one plural, one counts sentence.

Takes strings and counts (an `Outcome` count mapping, or the `HarvestReport` they come from);
gives short strings. The keruta-api status message (harvest), the Kubernetes Events (kube), the
server excerpts in error sentences (wire) and everything a person reads (report) cut and count
through these, so a number or a cut reads the same wherever it appears. No terminal, no rich:
what makes text safe for a terminal lives in `harvester.report.text`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from harvester.model import FileReport, HarvestReport, Outcome

__all__ = ["ELLIPSIS", "counts_sentence", "cut", "outcome_counts", "plural"]

# The one mark of a cut: a single character, so a limit in characters is the length people see.
ELLIPSIS = "\u2026"
_ELLIPSIS_BYTES = ELLIPSIS.encode("utf-8")

# What each outcome is called in the counts sentence, in the order the sentence names them.
_PHRASES: dict[Outcome, tuple[str, str]] = {
    Outcome.UPLOADED: ("uploaded", "uploaded"),
    Outcome.PLANNED: ("to upload", "to upload"),
    Outcome.ALREADY_UPLOADED: ("already uploaded", "already uploaded"),
    Outcome.DUPLICATE: ("duplicate", "duplicates"),
    Outcome.SKIPPED: ("skipped", "skipped"),
    Outcome.FAILED: ("failed", "failed"),
    Outcome.NOT_ATTEMPTED: ("not attempted", "not attempted"),
}


def cut(text: str, limit: int, *, in_bytes: bool = False) -> str:
    """`text` if it fits in `limit`, else its start and `…`, the whole at most `limit` long.

    `limit` counts characters, or UTF-8 bytes with `in_bytes` (a Kubernetes field's limit);
    a cut never splits a character. The mark is left out when not even it fits.
    """
    if not in_bytes:
        if len(text) <= limit:
            return text
        return text[: limit - 1] + ELLIPSIS if limit >= 1 else ""
    data = text.encode("utf-8", "backslashreplace")  # a lone surrogate has no UTF-8
    if len(data) <= limit:
        return text
    mark = _ELLIPSIS_BYTES if limit >= len(_ELLIPSIS_BYTES) else b""
    kept = data[: max(limit - len(mark), 0)].decode("utf-8", "ignore")
    return kept + mark.decode("utf-8")


def plural(n: int, word: str, plural_form: str | None = None) -> str:
    """`1 file`, `2 files`; `plural_form` when adding an `s` is wrong."""
    return f"{n} {word if n == 1 else (plural_form or word + 's')}"


def outcome_counts(files: Iterable[FileReport]) -> dict[Outcome, int]:
    """How many files ended in each outcome (every outcome present, zero when none)."""
    counts = dict.fromkeys(Outcome, 0)
    for f in files:
        counts[f.outcome] += 1
    return counts


def counts_sentence(
    counts: Mapping[Outcome, int] | HarvestReport, *, lead: Outcome = Outcome.UPLOADED
) -> str:
    """`6 documents uploaded, 1 already uploaded, 2 duplicates, 1 skipped`: the `lead` count
    always (`lead=Outcome.PLANNED` for a plan: `2 documents to upload, ...`), then every other
    outcome that happened, in one fixed order."""
    if isinstance(counts, HarvestReport):
        counts = outcome_counts(counts.files)
    n = counts.get(lead, 0)
    parts = [f"{plural(n, 'document')} {_PHRASES[lead][0]}"]
    for outcome, (one, many) in _PHRASES.items():
        n = counts.get(outcome, 0)
        if outcome is not lead and n:
            parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts)
