"""The multipart/form-data shape of one document upload, and the filename encoding it uses.

Takes a relative path, its digest and size; gives the bytes that surround the file's content
(`MultipartBody.head` and `.tail`) so the content itself can be streamed from disk between them
with a Content-Length known up front. Also decodes a part's Content-Disposition (used by dev-api).

Filenames: RFC 7578 lets `filename` carry UTF-8 as is, which Tomcat/Spring and browsers read; some
parsers unescape backslashes in quoted strings and others do not. So a name that is plain ASCII
without quote, backslash or percent is sent as `filename="..."` alone, and any other name also
gets the unambiguous RFC 5987 `filename*=UTF-8''...` form, which Spring prefers when present.
"""

from __future__ import annotations

import functools
import itertools
import mimetypes
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote

from harvester.wire.contract import FILE_PART, TEXT_PARTS

mimetypes.init()

# Every body's boundary: random per process, numbered per body. Unguessable by whoever wrote the
# files before the harvest began (as one random per body was), and no system call per upload: a
# getrandom per body released the GIL, a hand-off between threads, on every small document.
_BOUNDARY_PREFIX = "keruta-" + secrets.token_hex(8)
_boundaries = itertools.count()

_PLAIN_FILENAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$&'()*+,-./:;<=>?@[]^_`{|}~"
)
# WHATWG's escapes, plus the backslash: parsers that unescape quoted strings would otherwise
# read a trailing backslash as escaping the closing quote. Such names also carry filename*.
_FALLBACK_ESCAPES = {'"': "%22", "\r": "%0D", "\n": "%0A", "\\": "%5C"}


def guess_content_type(rel_path: str) -> str:
    """The part's Content-Type, from the name's last two suffixes (`.tar.gz`), which are all
    `mimetypes` reads of it: asked once per kind of name, not once per file."""
    # As os.path.splitext reads a name: its leading dots start no suffix.
    name = rel_path.rpartition("/")[2].lstrip(".")
    last = name.rfind(".")
    if last < 0:
        return _content_type_of("")
    before = name.rfind(".", 0, last)
    return _content_type_of("x" + name[before if before > 0 else last :])


@functools.lru_cache(maxsize=1024)
def _content_type_of(suffixes: str) -> str:
    guessed, _encoding = mimetypes.guess_type(suffixes, strict=False)
    return guessed or "application/octet-stream"


def filename_params(rel_path: str) -> str:
    """The Content-Disposition parameters that name the file, e.g. `filename="a/b.md"`."""
    if set(rel_path) <= _PLAIN_FILENAME_CHARS:
        return f'filename="{rel_path}"'  # nothing to escape: no quote, backslash or percent
    fallback = "".join(_FALLBACK_ESCAPES.get(ch, ch) for ch in rel_path)
    return f"filename=\"{fallback}\"; filename*=UTF-8''" + quote(
        rel_path, safe="", encoding="utf-8"
    )


@dataclass(frozen=True, slots=True)
class MultipartBody:
    """Everything of a document upload's body except the file's content."""

    content_type: str
    head: bytes
    tail: bytes
    file_size: int

    @property
    def content_length(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)


def document_body(
    rel_path: str, sha256: str, size: int, *, boundary: str | None = None
) -> MultipartBody:
    """The multipart body for one document: `TEXT_PARTS` (path, sha256, size), then the file."""
    boundary = boundary or f"{_BOUNDARY_PREFIX}{next(_boundaries):016x}"
    # Built as one string, encoded once: for many small documents the framing is a measurable
    # part of each request.
    text_parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in zip(TEXT_PARTS, (rel_path, sha256, str(size)), strict=True)
    )
    head = (
        f"{text_parts}--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{FILE_PART}"; {filename_params(rel_path)}\r\n'
        f"Content-Type: {guess_content_type(rel_path)}\r\n\r\n"
    ).encode()
    return MultipartBody(
        content_type=f"multipart/form-data; boundary={boundary}",
        head=head,
        tail=f"\r\n--{boundary}--\r\n".encode("ascii"),
        file_size=size,
    )


def parse_content_disposition(value: str) -> dict[str, str]:
    """Parameters of a part's Content-Disposition, with `filename*` decoded into `filename`.

    Accepts what browsers, curl, httpx and this module send: quoted or bare values, WHATWG's
    %22/%0D/%0A escapes inside a quoted filename, and RFC 5987 `filename*` (which wins).
    """
    params: dict[str, str] = {}
    extended: str | None = None
    for raw_name, raw_value in _split_params(value):
        name = raw_name.strip().lower()
        if name == "filename*":
            charset, _, rest = raw_value.partition("'")
            _language, _, encoded = rest.partition("'")
            extended = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        elif name == "filename":
            params["filename"] = (
                raw_value.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")
            )
        else:
            params[name] = raw_value
    if extended is not None:
        params["filename"] = extended
    return params


def _split_params(value: str) -> list[tuple[str, str]]:
    """`form-data; name="a"; filename="b;c"` -> [("name", "a"), ("filename", "b;c")]."""
    pairs: list[tuple[str, str]] = []
    i, n = value.find(";"), len(value)
    while 0 <= i < n:
        i += 1
        eq = value.find("=", i)
        if eq < 0:
            break
        name = value[i:eq].strip()
        j = eq + 1
        while j < n and value[j] == " ":
            j += 1
        if j < n and value[j] == '"':
            j += 1
            chars: list[str] = []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n and value[j + 1] in '"\\':
                    j += 1
                chars.append(value[j])
                j += 1
            pairs.append((name, "".join(chars)))
            i = value.find(";", j + 1)
        else:
            end = value.find(";", j)
            end = n if end < 0 else end
            pairs.append((name, value[j:end].strip()))
            i = end
    return pairs
