"""The multipart shape of an upload and the filename round trip, for any relative path."""

from __future__ import annotations

import email.parser
import email.policy
import mimetypes
import subprocess
import sys

from hypothesis import example, given
from hypothesis import strategies as st

from harvester.wire.multipart import (
    document_body,
    filename_params,
    guess_content_type,
    parse_content_disposition,
)

# Path segments as a filesystem could hold them once decoded: any text but "/" and NUL.
segment = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))
relative_path = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(relative_path)
def test_filename_round_trips_through_content_disposition(path: str) -> None:
    header = f'form-data; name="file"; {filename_params(path)}'
    params = parse_content_disposition(header)
    assert params["name"] == "file"
    assert params["filename"] == path


@given(relative_path)
def test_header_is_sendable_as_is(path: str) -> None:
    header = filename_params(path)
    assert "\r" not in header and "\n" not in header
    header.encode("utf-8")  # no lone surrogates: the path came decoded


def test_plain_names_carry_no_extended_form() -> None:
    assert filename_params("reports/2026-11/summary.md") == 'filename="reports/2026-11/summary.md"'


def test_non_ascii_names_add_rfc5987_form() -> None:
    params = filename_params("notes/レビュー.md")
    assert params.startswith("filename=\"notes/レビュー.md\"; filename*=UTF-8''")
    assert "%E3%83%AC" in params


def test_body_parses_as_standard_multipart_with_the_contract_parts() -> None:
    content = b"# Summary\nall good\n"
    body = document_body("reports/結果.md", "ab" * 32, len(content), boundary="XyZ")
    raw = body.head + content + body.tail
    assert len(raw) == body.content_length
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + raw
    )
    parts = {
        part.get_param("name", header="content-disposition"): part for part in message.iter_parts()
    }
    assert list(parts) == ["path", "sha256", "size", "file"]
    assert parts["path"].get_payload(decode=True) == "reports/結果.md".encode()
    assert parts["sha256"].get_payload(decode=True) == b"ab" * 32
    assert parts["size"].get_payload(decode=True) == str(len(content)).encode()
    assert parts["file"].get_payload(decode=True) == content
    assert parts["file"].get_content_type() == "text/markdown"
    assert parts["file"].get_filename() == "reports/結果.md"


def test_content_type_guess_falls_back_to_octet_stream() -> None:
    assert guess_content_type("results/audit.json") == "application/json"
    assert guess_content_type("images/chart.png") == "image/png"
    assert guess_content_type("data/blob.unknownext") == "application/octet-stream"


# Names made of what mimetypes reads: every suffix it knows (types, encodings, aliases), in any
# case, with dots, letters and folders around them.
_SUFFIXES = sorted({*mimetypes.types_map, *mimetypes.encodings_map, *mimetypes.suffix_map})
_NAME_PIECES = st.one_of(
    st.sampled_from(_SUFFIXES),
    st.sampled_from(_SUFFIXES).map(str.upper),
    st.sampled_from([".", "..", "a", "B", "x.y/", "/", "日本", " "]),
)


@given(st.lists(_NAME_PIECES, max_size=6).map("".join))
@example("reports/a.tar.gz")
@example("d.x/..glb")
@example("a.tgz")
def test_the_content_type_is_what_mimetypes_makes_of_the_whole_path(path: str) -> None:
    guessed, _encoding = mimetypes.guess_type(path, strict=False)
    assert guess_content_type(path) == (guessed or "application/octet-stream")


def test_every_body_has_its_own_boundary_and_every_process_its_own_series() -> None:
    def boundary() -> str:
        return document_body("a.md", "ab" * 32, 1).content_type.partition("boundary=")[2]

    ours = {boundary() for _ in range(1000)}
    assert len(ours) == 1000
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harvester.wire.multipart import document_body as d;"
            "print(d('a.md', 'ab' * 32, 1).content_type.partition('boundary=')[2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert other.startswith("keruta-")
    assert other not in ours
    assert other[: len("keruta-") + 16] != next(iter(ours))[: len("keruta-") + 16]
