"""The files a run leaves behind: the `--summary-json` file and the pod's termination message.

Takes a `HarvestReport` (or, for a run that could not start, the sentence saying why) and a
path; gives the file, written whole. These are the only writers of either file, so the
termination message has one shape and one size limit whichever way a run ends.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from harvester.model import HarvestReport
from harvester.report.summary import error_message, report_to_json, termination_message
from harvester.report.text import hidden

__all__ = ["TERMINATION_LOG", "write_summary_json", "write_termination_log"]

# Where Kubernetes reads a container's termination message from (terminationMessagePath).
TERMINATION_LOG = Path("/dev/termination-log")

_NOT_PLAIN_ASCII = re.compile(r"[^\n -~]")


def _json_text(data: dict[str, Any]) -> str:
    """`data` as JSON in readable UTF-8, with every hidden character (see `text.hidden`)
    written as a `\\u` escape: the values read back exactly, and a person who opens the file
    sees no reordered or invisible text. Lone surrogates from odd names are escaped the same
    way."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    # Outside its strings this JSON holds only printable ASCII and newlines, so only string
    # contents are touched; the pattern skips plain ASCII, which keeps a huge summary fast.
    return _NOT_PLAIN_ASCII.sub(lambda m: _json_escaped(m[0]) if hidden(m[0]) else m[0], text)


def _json_escaped(ch: str) -> str:
    n = ord(ch)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # JSON spells a character beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def write_summary_json(report: HarvestReport, path: str | os.PathLike[str]) -> None:
    """Write `report_to_json(report)` to `path` atomically (a reader sees old or new, whole).

    Raises OSError when the folder cannot take the file; no temporary file is left behind.
    """
    target = Path(path)
    text = _json_text(report_to_json(report))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; the summary holds nothing secret
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_termination_log(
    outcome: HarvestReport | str, path: str | os.PathLike[str] = TERMINATION_LOG
) -> OSError | None:
    """Write how the run ended to `path` if it exists (in a pod); never raises.

    `outcome` is the harvest's report (`termination_message`) or, when the run could not start,
    the sentence saying why (`error: ...`). Gives the error when the file is there but could
    not be written (disk full), else None.
    """
    if isinstance(outcome, HarvestReport):
        data = termination_message(outcome).encode("utf-8")
    else:
        data = error_message(outcome).encode("utf-8")
    try:
        # No O_CREAT: outside Kubernetes the file is absent and must stay absent.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None
