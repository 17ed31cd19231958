"""Text for people: sizes, durations, rates, and the one way any text is made safe to show.

Takes numbers and strings (paths, server answers, messages); gives short strings that every
reporter and renderer of this package prints, so a size or a failure line reads the same on a
terminal, in `kubectl logs`, in the summary table and in the termination message. No rich here.

Sizes are binary, in the unit `--max-file-size` is given in (`12 B`, `812 KiB`, `4.1 MiB`), as
rclone prints them: a file shown as `100 MiB` is exactly at the default limit.
"""

from __future__ import annotations

import math
import unicodedata

from harvester.text import cut

__all__ = [
    "ERROR_CHARS",
    "failure_line",
    "hidden",
    "human_duration",
    "human_size",
    "one_line",
    "printable",
    "rate_text",
    "size_pair",
    "without_subject",
]

# Longest error shown for one file in a table, a log line or the termination message: enough
# for the server's sentence and a useful part of its body, never a screenful.
ERROR_CHARS = 300

_SIZE_STEP = 1024
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
# Characters shown as escapes wherever a person reads text, by Unicode category: controls (C0,
# DEL, C1: a file name may hold an ESC, and printing it raw would let a document rewrite the
# operator's terminal or forge log lines), format characters (the bidi overrides, embeddings,
# isolates and marks: U+202E makes "invoice-\u202egpj.exe" read "invoice-exe.jpg"; zero-width
# and tag characters hide text), line and paragraph separators (they break a line), and lone
# surrogates (they cannot be written as UTF-8). ZWNJ and ZWJ are kept: Persian, Indic scripts and
# emoji need them, and they move nothing.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_KEPT_FORMAT = frozenset("\u200c\u200d")


def human_size(n: int) -> str:
    """A byte count in binary units with at most three significant digits: `812 KiB`."""
    if n < 0:
        return "-" + human_size(-n)
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in _SIZE_UNITS[1:]:
        value /= _SIZE_STEP
        if round(value, 1) < 100:
            return f"{value:.1f} {unit}"
        if round(value) < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{round(value)} {unit}"
    raise AssertionError("unreachable: the last unit always returns")


def human_duration(seconds: float) -> str:
    """A duration the way people say it: `0.4s`, `6s`, `1m05s`, `2h03m`; `-` when unknown."""
    if not math.isfinite(seconds):
        return "-"
    s = max(seconds, 0.0)
    if 0.05 <= s < 0.95:
        return f"{s:.1f}s"
    total = round(s)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def rate_text(rate_bps: float | None) -> str:
    """`4.1 MiB/s`; `-/s` when unknown."""
    return "-/s" if rate_bps is None else f"{human_size(round(rate_bps))}/s"


def size_pair(done: int, total: int) -> str:
    """`21.3/45.2 MiB` when both sides share a unit, `812 KiB/45.2 MiB` otherwise."""
    d, t = human_size(done), human_size(total)
    d_num, _, d_unit = d.partition(" ")
    t_num, _, t_unit = t.partition(" ")
    return f"{d_num}/{t_num} {t_unit}" if d_unit == t_unit else f"{d}/{t}"


def hidden(ch: str) -> bool:
    """Whether `ch` acts on the terminal or on how the text around it reads."""
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES and ch not in _KEPT_FORMAT


def printable(text: str) -> str:
    """The text with hidden characters shown as Python escapes (`\\x1b`, `\\u202e`,
    `\\U000e0041`) instead of acting on the terminal: the one way every path and every text
    from a server or the OS is made fit for a person to read."""
    if text.isprintable():  # the common case: isprintable() is False for every hidden character
        return text
    return "".join(_escaped(ch) if hidden(ch) else ch for ch in text)


def _escaped(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """A message on one line (server bodies come with newlines), safe to print, cut to size."""
    return cut(printable(" ".join(text.split())), limit)


def without_subject(rel_path: str, message: str) -> str:
    """`message` without the `rel_path: ` it opens with, so a line names its file only once.

    Compared before the message is made one line: that collapses runs of whitespace, and a name
    with two spaces or a newline would no longer match.
    """
    return message[len(rel_path) + 1 :].lstrip() if message.startswith(rel_path + ":") else message


def failure_line(rel_path: str, message: str) -> str:
    """`FAILED reports/a.md: upload failed: ...`, without naming the path twice."""
    return f"FAILED {printable(rel_path)}: {one_line(without_subject(rel_path, message))}"
