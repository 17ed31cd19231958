"""A large document is streamed from its file: by sendfile on a plain connection, read in pieces
on a TLS one, and never sent complete if the file changed while it went out.

Against real loopback servers (the keep-alive test server, with and without TLS) and real
harvests into a real dev-api, with files changed on disk at a known point of the upload: after
the first piece was sent (a listener told of it, on the uploading thread, before the next).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from harvester.devapi.server import DevApiServer
from harvester.errors import FileChanged
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import run_harvest
from harvester.model import FileSpan
from harvester.pipeline.rootfs import CHUNK_SIZE
from harvester.stats import Level, NullListener, Stage
from harvester.wire.client import KerutaApi
from tests.fstree import write_tree
from tests.servers import KeepAliveServer
from tests.test_harvest import Sleeps, settings_for
from tests.test_transport import ca, ca_file, client, server_context

__all__ = ["ca", "ca_file"]  # fixtures, used by name

SIZE = 2 * CHUNK_SIZE + CHUNK_SIZE // 2  # two spans and a last piece read into memory


def _content(seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * (CHUNK_SIZE // 32)
    return (block * 3)[:SIZE]


def _upload_spans(api: KerutaApi, path: Path, content: bytes) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        spans = [
            FileSpan(fd, offset, min(CHUNK_SIZE, len(content) - offset), "big.bin")
            for offset in range(0, len(content), CHUNK_SIZE)
        ]
        sha256 = hashlib.sha256(content).hexdigest()
        return api.upload_document("t", "big.bin", sha256, len(content), iter(spans))
    finally:
        os.close(fd)


def _sent_content(body: bytes) -> bytes:
    """The file part's content in a multipart body (the last part, as the client sends it)."""
    boundary = body.split(b"\r\n", 1)[0]
    start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
    return body[start : body.rindex(b"\r\n" + boundary + b"--")]


@contextmanager
def _served(
    scheme: str, ca: trustme.CA, ca_file: Path
) -> Iterator[tuple[KeepAliveServer, KerutaApi]]:
    """The keep-alive test server on `scheme` (https with `ca`'s certificate) and a client."""
    tls = server_context(ca, "localhost")[0] if scheme == "https" else None
    options = {"ca_cert": ca_file} if tls else {}
    with KeepAliveServer(tls=tls) as server, client(server.url, **options) as api:
        assert server.url.startswith(f"{scheme}://")
        yield server, api


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_spans_arrive_whole_and_in_order(
    tmp_path: Path, scheme: str, ca: trustme.CA, ca_file: Path
) -> None:
    content = _content(b"spans")
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    with _served(scheme, ca, ca_file) as (server, api):
        assert _upload_spans(api, path, content) == "doc-1"
    (body,) = server.bodies
    assert _sent_content(body) == content


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_file_shorter_than_its_spans_aborts_the_request_and_says_so(
    tmp_path: Path, scheme: str, ca: trustme.CA, ca_file: Path
) -> None:
    content = _content(b"short")
    path = tmp_path / "big.bin"
    path.write_bytes(content[: CHUNK_SIZE + 10])
    with _served(scheme, ca, ca_file) as (server, api):
        with pytest.raises(FileChanged, match=r"big\.bin: shrank while it was uploaded"):
            _upload_spans(api, path, content)
        path.write_bytes(content)
        assert _upload_spans(api, path, content) is not None  # on a new connection, unharmed
    # The test server reads a body cut short by the close as it came, so it is in `bodies`.
    *aborted, sent = server.bodies
    assert all(len(body) < len(sent) for body in aborted), "an aborted body arrived whole"
    assert _sent_content(sent) == content


class ChangeWhileUploading(NullListener):
    """Changes `path` once, on the uploading thread, when the first piece of it has been sent:
    rewritten with `content`, or cut to `truncate_to` bytes. Notes the warnings."""

    def __init__(self, path: Path, content: bytes | None = None, truncate_to: int = 0) -> None:
        self.path, self.content, self.truncate_to = path, content, truncate_to
        self.changed = False
        self.warnings: list[str] = []

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        if stage is Stage.UPLOAD and nbytes > 0 and not self.changed:
            self.changed = True
            if self.content is not None:
                self.path.write_bytes(self.content)
            else:
                os.truncate(self.path, self.truncate_to)

    def notice(self, level: Level, message: str) -> None:
        if level is Level.WARNING:
            self.warnings.append(message)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["rewritten", "truncated"])
def test_a_large_file_changed_while_it_is_sent_is_sent_again_as_it_is_now(
    tmp_path: Path, dev_api: DevApiServer, change: str
) -> None:
    first = _content(b"first")
    root = write_tree(tmp_path / "doc", {"big.bin": first})
    path = root / "big.bin"
    if change == "rewritten":
        final = _content(b"second")  # the same size: only the ctime tells
        listener = ChangeWhileUploading(path, content=final)
    else:
        final = first[: CHUNK_SIZE // 2]  # the next span finds the end of the file
        listener = ChangeWhileUploading(path, truncate_to=len(final))

    report = run_harvest(settings_for(root, dev_api.url), listener, sleep=Sleeps()).report

    assert listener.changed
    assert exit_code_for(report) is ExitCode.OK
    (doc,) = dev_api.store.documents("task-42")
    assert (doc.sha256, doc.size) == (hashlib.sha256(final).hexdigest(), len(final))
    assert listener.warnings == ["big.bin: changed after it was hashed; hashed again and resending"]
