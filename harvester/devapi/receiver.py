"""One streaming multipart/form-data upload, as it arrives.

Takes the chunks of one `POST .../documents` body (fed to python-multipart's `MultipartParser`
through `UploadReceiver.callbacks()`) and a temp folder; gives the text parts (`path`, `sha256`,
`size`), the `file` part's filename, content type, size and SHA-256, and `checked_path()`, which
holds the upload to its own claims. The `file` part is hashed on the fly and spooled, in memory up
to `_SPOOL_LIMIT` and in a temp file beyond, so memory per upload stays bounded whatever the file
size; `commit` moves it into its content-addressed blob, `discard` removes what is left.

A request it refuses raises `Rejected`, whose message is the sentence the server sends back.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from harvester.wire.contract import FILE_PART, PATH_PART, SHA256_PART, SIZE_PART, TEXT_PARTS
from harvester.wire.multipart import parse_content_disposition

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["Rejected", "UploadReceiver"]

# A file part up to this size is hashed in memory and written only if its blob is new, so a
# benchmark of small (often identical) uploads never touches the disk; anything larger streams
# through a temp file. Memory per upload stays bounded by this, whatever the file size.
_SPOOL_LIMIT: Final = 256 * 1024
_TEXT_PART_LIMIT: Final = 64 * 1024
# The exact headers the harvester sends for its text parts: a dict hit instead of a parse.
_PLAIN_TEXT_DISPOSITIONS: Final = {f'form-data; name="{name}"': name for name in TEXT_PARTS}


class Rejected(Exception):
    """A request the dev-api refuses; the message is the sentence sent back."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def _decode_header(raw: bytes | bytearray) -> str:
    # RFC 7578 lets a filename travel as raw UTF-8; older clients send Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class UploadReceiver:
    """The callbacks of one streaming multipart parse.

    Keeps the small text parts, hashes the `file` part as it arrives and spools it (in memory up
    to `_SPOOL_LIMIT`, then into a temp file inside the data folder, so the final move into the
    blob folder is a rename on the same file system).
    """

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._kind = 0  # 0: ignored part, 1: text part, 2: the file part
        self._part_name = ""
        self._text = bytearray()
        self._hash = hashlib.sha256()
        self._spool = bytearray()
        self._tmp_path: Path | None = None
        self._tmp_file: BinaryIO | None = None
        self.fields: dict[str, str] = {}
        self.has_file = False
        self.filename: str | None = None
        self.content_type = "application/octet-stream"
        self.size = 0
        self.ended = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._kind = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = _decode_header(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = self._headers.get("content-disposition")
        if disposition is None:
            return
        name = _PLAIN_TEXT_DISPOSITIONS.get(disposition)
        if name is not None:
            params: dict[str, str] = {}
        else:
            try:
                params = parse_content_disposition(disposition)
            except (UnicodeDecodeError, LookupError) as exc:
                msg = f"a part's Content-Disposition cannot be decoded: {exc}"
                raise Rejected(msg) from exc
            name = params.get("name", "")
        if name == FILE_PART:
            if self.has_file:
                raise Rejected("the body has more than one part named 'file'; send one per request")
            self.has_file = True
            self.filename = params.get("filename")
            self.content_type = self._headers.get("content-type") or self.content_type
            self._kind = 2
        elif name in TEXT_PARTS:
            self._part_name = name
            self._text.clear()
            self._kind = 1

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == 2:
            chunk = memoryview(data)[start:end]
            self._hash.update(chunk)
            self.size += len(chunk)
            if self._tmp_file is not None:
                self._tmp_file.write(chunk)
            else:
                self._spool += chunk
                if len(self._spool) > _SPOOL_LIMIT:
                    self._spill()
        elif self._kind == 1:
            if len(self._text) + end - start > _TEXT_PART_LIMIT:
                raise Rejected(f"the '{self._part_name}' part is longer than {_TEXT_PART_LIMIT}")
            self._text += data[start:end]

    def _on_part_end(self) -> None:
        if self._kind == 1:
            try:
                self.fields[self._part_name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Rejected(f"the '{self._part_name}' part is not UTF-8") from exc
        self._kind = 0

    def _on_end(self) -> None:
        self.ended = True

    def _spill(self) -> None:
        self._tmp_path = self._tmp_dir / f"{uuid.uuid4().hex}.part"
        self._tmp_file = self._tmp_path.open("xb")
        self._tmp_file.write(self._spool)
        self._spool = bytearray()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def checked_path(self) -> str:
        """The document's path, once the finished upload is held to its own claims.

        Raises `Rejected` when the body ended early, has no `file` part, its `sha256` or `size`
        part disagrees with what arrived, or neither a `path` part nor a filename names it.
        """
        if not self.ended:
            raise Rejected("the multipart body ended before its closing boundary")
        if not self.has_file:
            raise Rejected("the body has no part named 'file'")
        digest = self.sha256
        claimed_sha = self.fields.get(SHA256_PART)
        if claimed_sha is not None and claimed_sha.strip().lower() != digest:
            raise Rejected(
                f"sha256 mismatch: the 'sha256' part says {claimed_sha.strip()[:80]!r}, "
                f"the received content hashes to {digest}"
            )
        claimed_size = self.fields.get(SIZE_PART)
        if claimed_size is not None:
            text = claimed_size.strip()
            if not (text.isascii() and text.isdigit()):
                raise Rejected(f"the 'size' part is not a byte count: {text[:80]!r}")
            if int(text) != self.size:
                raise Rejected(
                    f"size mismatch: the 'size' part says {int(text)}, "
                    f"{self.size} bytes of content arrived"
                )
        path = self.fields.get(PATH_PART) or self.filename
        if not path:
            raise Rejected("the 'file' part has no filename and there is no 'path' part")
        return path

    def commit(self, blob: Path) -> None:
        """Make the received content the blob `blob` (a no-op when that blob already exists)."""
        if blob.exists():
            return
        if self._tmp_file is None:
            self._spill()
        assert self._tmp_file is not None and self._tmp_path is not None
        self._tmp_file.close()
        self._tmp_file = None
        self._tmp_path.replace(blob)
        self._tmp_path = None

    def discard(self) -> None:
        """Remove whatever temp file is left (all of it, on a rejected upload)."""
        if self._tmp_file is not None:
            self._tmp_file.close()
            self._tmp_file = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
            self._tmp_path = None
        self._spool = bytearray()
