"""dev-api over real loopback sockets: uploads, idempotency, auth, status, streaming."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.devapi.server import DevApiServer
from harvester.model import TaskStatus
from harvester.wire.multipart import document_body

DOCS = "/api/tasks/{}/documents"
STATUS = "/api/v1/tasks/{}/status"
TASK = "/api/v1/tasks/{}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevApiServer]:
    with DevApiServer(tmp_path / "data") as running:
        yield running


@pytest.fixture
def client(server: DevApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def upload(
    client: httpx.Client,
    rel_path: str,
    content: bytes,
    *,
    task: str = "t1",
    claimed_sha: str | None = None,
    claimed_size: int | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST one document exactly as the harvester frames it (harvester.wire.multipart)."""
    body = document_body(
        rel_path,
        sha(content) if claimed_sha is None else claimed_sha,
        len(content) if claimed_size is None else claimed_size,
    )
    return client.post(
        DOCS.format(task),
        content=body.head + content + body.tail,
        headers={"Content-Type": body.content_type, **(headers or {})},
    )


def stored_files(server: DevApiServer) -> list[Path]:
    data_dir = server.store.data_dir
    return sorted(p for p in data_dir.rglob("*") if p.is_file())


# --- uploads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel_path",
    ["reports/summary.md", "レポート/結果.md", 'odd "quoted" \\ back\\slash.txt'],
)
def test_upload_round_trip_keeps_path_and_content(
    server: DevApiServer, client: httpx.Client, rel_path: str
) -> None:
    content = b"# result\n" + rel_path.encode("utf-8") + bytes(range(256))
    response = upload(client, rel_path, content)

    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["path"] == rel_path
    assert doc["filename"] == rel_path
    assert doc["taskId"] == "t1"
    assert doc["sha256"] == sha(content)
    assert doc["size"] == len(content)
    assert doc["id"]
    assert doc["createdAt"].endswith("Z")
    got = client.get(f"{DOCS.format('t1')}/{doc['id']}/content")
    assert got.status_code == 200
    assert got.content == content
    assert (server.store.blobs_dir / sha(content)).read_bytes() == content
    assert client.get(DOCS.format("t1")).json() == [doc]


def test_content_type_of_the_file_part_is_kept(client: httpx.Client) -> None:
    assert upload(client, "a.md", b"x").json()["contentType"] == "text/markdown"
    assert upload(client, "b.bin", b"y").json()["contentType"] == "application/octet-stream"


def test_curl_style_upload_with_only_a_file_part(
    server: DevApiServer, client: httpx.Client
) -> None:
    # `curl -F file=@notes.txt`: no path, sha256 or size parts; the filename names the document.
    response = client.post(DOCS.format("t1"), files={"file": ("notes.txt", b"just a file")})

    assert response.status_code == 201, response.text
    doc = response.json()
    assert (doc["path"], doc["filename"]) == ("notes.txt", "notes.txt")
    assert doc["sha256"] == sha(b"just a file")
    assert doc["size"] == len(b"just a file")
    assert server.store.blob_path(doc["sha256"]).read_bytes() == b"just a file"


def test_path_part_wins_over_the_filename(client: httpx.Client) -> None:
    response = client.post(
        DOCS.format("t1"),
        data={"path": "deep/folder/notes.txt"},
        files={"file": ("notes.txt", b"content")},
    )
    assert response.status_code == 201, response.text
    assert response.json()["path"] == "deep/folder/notes.txt"
    assert response.json()["filename"] == "notes.txt"


@pytest.mark.parametrize("size", [10, 600_000], ids=["spooled-in-memory", "spilled-to-disk"])
def test_sha256_mismatch_is_rejected_and_nothing_stored(
    server: DevApiServer, client: httpx.Client, size: int
) -> None:
    content = os.urandom(size)
    response = upload(client, "a.txt", content, claimed_sha="0" * 64)

    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "sha256" in response.json()["message"]
    assert sha(content) in response.json()["message"]
    assert client.get(DOCS.format("t1")).json() == []
    assert server.store.documents("t1") == ()
    assert stored_files(server) == []  # no blob, no temp file left behind


def test_size_mismatch_is_rejected_and_nothing_stored(
    server: DevApiServer, client: httpx.Client
) -> None:
    response = upload(client, "a.txt", b"12345", claimed_size=6)

    assert response.status_code == 400
    assert "size" in response.json()["message"]
    assert server.store.documents("t1") == ()
    assert stored_files(server) == []


def test_missing_file_part_is_rejected(server: DevApiServer, client: httpx.Client) -> None:
    response = client.post(DOCS.format("t1"), files={"other": ("a.txt", b"x")})

    assert response.status_code == 400
    assert "'file'" in response.json()["message"]
    assert server.store.documents("t1") == ()


def test_not_multipart_is_415(server: DevApiServer, client: httpx.Client) -> None:
    response = client.post(DOCS.format("t1"), json={"file": "x"})

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert server.store.documents("t1") == ()


def test_truncated_multipart_body_is_rejected(server: DevApiServer, client: httpx.Client) -> None:
    content = b"half of a file"
    body = document_body("a.txt", sha(content), len(content))
    response = client.post(
        DOCS.format("t1"),
        content=body.head + content,  # no closing boundary
        headers={"Content-Type": body.content_type},
    )

    assert response.status_code == 400
    assert "closing boundary" in response.json()["message"]
    assert stored_files(server) == []


def test_large_upload_is_streamed_to_disk(server: DevApiServer, client: httpx.Client) -> None:
    content = os.urandom(5 * 1024 * 1024)
    body = document_body("big/archive.bin", sha(content), len(content))
    half = 3 * 1024 * 1024
    seen_in_flight: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield body.head
        for i in range(0, half, 64 * 1024):
            yield content[i : i + 64 * 1024]
        # Before sending the rest, the first part must already be on disk in the data folder:
        # a server that buffers the body in memory (or outside the data folder) fails here.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            parts = list(server.store.tmp_dir.glob("*"))
            size = max((p.stat().st_size for p in parts), default=0)
            if size >= 2 * 1024 * 1024:
                seen_in_flight.append(size)
                break
            time.sleep(0.01)
        for i in range(half, len(content), 64 * 1024):
            yield content[i : i + 64 * 1024]
        yield body.tail

    response = client.post(
        DOCS.format("t1"),
        content=chunks(),
        headers={"Content-Type": body.content_type, "Content-Length": str(body.content_length)},
    )

    assert response.status_code == 201, response.text
    assert seen_in_flight, "no partial temp file appeared while the body was still arriving"
    doc = response.json()
    assert (doc["sha256"], doc["size"]) == (sha(content), len(content))
    blob = server.store.blob_path(sha(content))
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha(content)
    assert list(server.store.tmp_dir.iterdir()) == []


def test_identical_content_is_stored_once_on_disk(
    server: DevApiServer, client: httpx.Client
) -> None:
    first = upload(client, "a.txt", b"same bytes")
    second = upload(client, "b.txt", b"same bytes")

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert [p.name for p in stored_files(server)] == [sha(b"same bytes")]


# --- idempotency ---------------------------------------------------------------------------


def test_idempotency_key_replays_the_original_document(
    server: DevApiServer, client: httpx.Client
) -> None:
    key = {"Idempotency-Key": "k-123"}
    first = upload(client, "a.txt", b"content", headers=key)
    again = upload(client, "a.txt", b"content", headers=key)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert [d.id for d in server.store.documents("t1")] == [first.json()["id"]]
    assert len(client.get(DOCS.format("t1")).json()) == 1
    # The connection stays usable after a replay (its body was read and dropped).
    assert (
        upload(client, "b.txt", b"other", headers={"Idempotency-Key": "k-456"}).status_code == 201
    )


def test_idempotency_replay_ignores_the_new_body(
    server: DevApiServer, client: httpx.Client
) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = upload(client, "a.txt", b"original", headers=key)
    # Even a body that would be rejected on its own is answered with the original document.
    again = upload(client, "a.txt", b"changed", claimed_sha="0" * 64, headers=key)

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert [p.name for p in stored_files(server)] == [sha(b"original")]


def test_concurrent_retries_with_one_key_store_one_document(server: DevApiServer) -> None:
    # Both requests are past the early key check before either finishes its body.
    in_flight = threading.Barrier(2, timeout=10)
    responses: list[httpx.Response] = []

    def send() -> None:
        content = b"retried content"
        body = document_body("a.txt", sha(content), len(content))

        def chunks() -> Iterator[bytes]:
            yield body.head
            in_flight.wait()
            time.sleep(0.2)
            yield content + body.tail

        with httpx.Client(base_url=server.url) as http:
            responses.append(
                http.post(
                    DOCS.format("t1"),
                    content=chunks(),
                    headers={
                        "Content-Type": body.content_type,
                        "Content-Length": str(body.content_length),
                        "Idempotency-Key": "same",
                    },
                )
            )

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.status_code for r in responses) == [200, 201]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert len(server.store.documents("t1")) == 1


def test_idempotency_keys_are_per_task(server: DevApiServer, client: httpx.Client) -> None:
    key = {"Idempotency-Key": "shared"}
    assert upload(client, "a.txt", b"x", task="t1", headers=key).status_code == 201
    assert upload(client, "a.txt", b"x", task="t2", headers=key).status_code == 201
    assert len(server.store.documents("t1")) == len(server.store.documents("t2")) == 1


def test_without_idempotency_key_each_upload_is_a_new_document(
    server: DevApiServer, client: httpx.Client
) -> None:
    assert upload(client, "a.txt", b"x").status_code == 201
    assert upload(client, "a.txt", b"x").status_code == 201
    assert len(server.store.documents("t1")) == 2


def test_listing_is_in_upload_order_and_per_task(client: httpx.Client) -> None:
    ids = [upload(client, name, name.encode()).json()["id"] for name in ("c", "a", "b")]
    upload(client, "elsewhere", b"z", task="t2")

    listing = client.get(DOCS.format("t1"))
    assert listing.status_code == 200
    assert [d["id"] for d in listing.json()] == ids
    assert [d["path"] for d in listing.json()] == ["c", "a", "b"]
    assert client.get(DOCS.format("never-seen")).json() == []


def test_content_of_an_unknown_document_is_404(client: httpx.Client) -> None:
    response = client.get(f"{DOCS.format('t1')}/nope/content")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# --- authentication ------------------------------------------------------------------------


def test_token_is_required_when_configured(tmp_path: Path) -> None:
    with (
        DevApiServer(tmp_path, token="s3cret-token") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            denied = upload(client, "a.txt", b"x", headers=headers)
            assert denied.status_code == 401
            assert denied.json()["error"] == "unauthorized"
            assert "s3cret-token" not in denied.text
            put = client.put(STATUS.format("t1"), json={"status": "COMPLETED"}, headers=headers)
            assert put.status_code == 401
            assert client.get(DOCS.format("t1"), headers=headers).status_code == 401
        assert server.store.task("t1") is None
        assert stored_files(server) == []

        auth = {"Authorization": "Bearer s3cret-token"}
        assert upload(client, "a.txt", b"x", headers=auth).status_code == 201
        ok = client.put(STATUS.format("t1"), json={"status": "COMPLETED"}, headers=auth)
        assert ok.status_code == 200
        assert len(client.get(DOCS.format("t1"), headers=auth).json()) == 1


def test_no_token_means_no_auth(client: httpx.Client) -> None:
    assert upload(client, "a.txt", b"x").status_code == 201


# --- status --------------------------------------------------------------------------------


def test_status_update_is_answered_with_the_task_and_kept_in_history(
    client: httpx.Client,
) -> None:
    first = client.put(STATUS.format("t1"), json={"status": "IN_PROGRESS", "progress": 10})
    done = client.put(
        STATUS.format("t1"),
        json={"status": "COMPLETED", "message": "harvested 3 files", "progress": 100},
    )

    assert first.status_code == 200
    assert done.status_code == 200
    body = done.json()
    assert body["id"] == "t1"
    assert (body["status"], body["message"], body["progress"], body["errorCode"]) == (
        "COMPLETED",
        "harvested 3 files",
        100,
        None,
    )
    assert body["updatedAt"]
    task = client.get(TASK.format("t1"))
    assert task.status_code == 200
    assert task.json()["status"] == "COMPLETED"
    history = task.json()["statusHistory"]
    assert [(h["status"], h["progress"]) for h in history] == [
        ("IN_PROGRESS", 10),
        ("COMPLETED", 100),
    ]


def test_failed_status_keeps_the_error_code(client: httpx.Client) -> None:
    response = client.put(
        STATUS.format("t1"),
        json={"status": "FAILED", "message": "2 uploads failed", "errorCode": "UPLOAD_FAILED"},
    )
    assert response.status_code == 200
    assert response.json()["errorCode"] == "UPLOAD_FAILED"


@pytest.mark.parametrize("status", list(TaskStatus))
def test_every_documented_status_is_accepted(client: httpx.Client, status: str) -> None:
    assert client.put(STATUS.format("t1"), json={"status": status}).status_code == 200


@pytest.mark.parametrize("status", ["PROCESSING", "completed", None, 3])
def test_invalid_status_is_400_naming_the_allowed_values(
    server: DevApiServer, client: httpx.Client, status: object
) -> None:
    response = client.put(STATUS.format("t1"), json={"status": status, "message": "m"})

    assert response.status_code == 400
    message = response.json()["message"]
    assert repr(status) in message
    assert all(allowed in message for allowed in TaskStatus)
    assert server.store.task("t1") is None


def test_unknown_key_is_400_naming_it(server: DevApiServer, client: httpx.Client) -> None:
    response = client.put(STATUS.format("t1"), json={"status": "COMPLETED", "percent": 100})

    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "'percent'" in response.json()["message"]
    assert server.store.task("t1") is None


@pytest.mark.parametrize("progress", [-1, 101, "50", True, 2.5])
def test_progress_must_be_an_int_from_0_to_100(
    server: DevApiServer, client: httpx.Client, progress: object
) -> None:
    response = client.put(STATUS.format("t1"), json={"status": "COMPLETED", "progress": progress})

    assert response.status_code == 400
    assert "progress" in response.json()["message"]
    assert server.store.task("t1") is None


@pytest.mark.parametrize("progress", [0, 100])
def test_progress_bounds_are_inclusive(client: httpx.Client, progress: int) -> None:
    response = client.put(STATUS.format("t1"), json={"status": "IN_PROGRESS", "progress": progress})
    assert response.status_code == 200
    assert response.json()["progress"] == progress


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_status_body_must_be_a_json_object(client: httpx.Client, body: bytes) -> None:
    response = client.put(
        STATUS.format("t1"), content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_unknown_task_is_404_until_first_used(client: httpx.Client) -> None:
    missing = client.get(TASK.format("t9"))
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"

    upload(client, "a.txt", b"x", task="t9")
    task = client.get(TASK.format("t9"))
    assert task.status_code == 200
    assert (task.json()["status"], task.json()["statusHistory"]) == ("PENDING", [])


def test_unknown_route_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# --- the server itself ---------------------------------------------------------------------


def test_latency_delays_every_answer(tmp_path: Path) -> None:
    with DevApiServer(tmp_path, latency=0.3) as server, httpx.Client(base_url=server.url) as c:
        started = time.monotonic()
        assert c.get(DOCS.format("t1")).status_code == 200
        assert time.monotonic() - started >= 0.3


def test_concurrent_uploads_are_all_stored(server: DevApiServer) -> None:
    errors: list[str] = []

    def work(worker: int) -> None:
        with httpx.Client(base_url=server.url) as http:
            for i in range(20):
                response = upload(http, f"w{worker}/{i}.txt", f"{worker}-{i}".encode())
                if response.status_code != 201:
                    errors.append(response.text)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(server.store.documents("t1")) == 160
    assert len(list(server.store.blobs_dir.iterdir())) == 160


def test_stop_releases_the_port(tmp_path: Path) -> None:
    server = DevApiServer(tmp_path).start()
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    assert port is not None
    with socket.create_connection((host, port), timeout=5):
        pass
    server.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()
    with pytest.raises(RuntimeError):
        _ = server.url


# --- property: any relative path survives the harvester's multipart framing ----------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevApiServer]:
    with DevApiServer(tmp_path_factory.mktemp("devapi-prop")) as running:
        yield running


def post_without_path_part(client: httpx.Client, rel_path: str, content: bytes) -> httpx.Response:
    """The harvester's framing minus the text parts: the name travels only in the file part."""
    body = document_body(rel_path, sha(content), len(content))
    boundary = body.content_type.partition("boundary=")[2]
    file_part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"'.encode()
    head = body.head[body.head.index(file_part) :]
    return client.post(
        DOCS.format("prop"),
        content=head + content + body.tail,
        headers={"Content-Type": body.content_type},
    )


def test_name_ending_in_backslash_survives(shared_server: DevApiServer) -> None:
    with httpx.Client(base_url=shared_server.url) as client:
        response = post_without_path_part(client, "dir\\", b"x")
    assert response.status_code == 201
    assert response.json()["filename"] == "dir\\"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rel_path=st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        min_size=1,
        max_size=40,
    )
)
def test_any_path_round_trips_through_filename_and_path_part(
    shared_server: DevApiServer, rel_path: str
) -> None:
    with httpx.Client(base_url=shared_server.url) as client:
        # Without the `path` part, the name must survive the file part's Content-Disposition.
        response = post_without_path_part(client, rel_path, b"p")
        assert response.status_code == 201, response.text
        assert response.json()["filename"] == rel_path
        assert response.json()["path"] == rel_path
        with_parts = upload(client, rel_path, b"q", task="prop")
        assert with_parts.status_code == 201, with_parts.text
        assert with_parts.json()["path"] == rel_path


def test_without_listing_or_idempotency_it_plays_a_server_that_has_neither(
    tmp_path: Path,
) -> None:
    with (
        DevApiServer(tmp_path / "data", listing=False, idempotency=False) as bare,
        httpx.Client(base_url=bare.url, timeout=30) as http,
    ):
        key = {"Idempotency-Key": "same-key"}
        first = upload(http, "a.md", b"a", headers=key)
        second = upload(http, "a.md", b"a", headers=key)
        assert (first.status_code, second.status_code) == (201, 201)
        assert first.json()["id"] != second.json()["id"]
        assert len(bare.store.documents("t1")) == 2
        listing = http.get(DOCS.format("t1"))
        assert listing.status_code == 404  # as a keruta-api without the route answers
