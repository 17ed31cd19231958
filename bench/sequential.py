"""The old keruta-agent's way of uploading, kept as a baseline: `python -m bench.sequential`.

Takes an API URL, a task id and a documents root; uploads every file one at a time, each read
whole into memory, each over a new connection, then sets the task's status; prints one JSON line
(`{"files": n, "bytes": b}`) and exits non-zero on the first failed request. The multipart
body is the harvester's own (`harvester.wire.multipart.document_body`), so the two send the same
bytes and differ only in how they send them. No Idempotency-Key: the old agent sent none.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from bench.data import iter_files
from harvester.wire.multipart import document_body

__all__ = ["main", "upload_all"]


def _connection(api_url: str) -> http.client.HTTPConnection:
    parts = urlsplit(api_url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=300)


def _request(
    api_url: str, method: str, path: str, head: bytes, content: bytes, tail: bytes, ctype: str
) -> None:
    conn = _connection(api_url)  # a new connection for every request: the old agent's way
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(head) + len(content) + len(tail)))
        conn.endheaders()
        conn.send(head)
        conn.send(content)
        conn.send(tail)
        response = conn.getresponse()
        answer = response.read()
        if response.status >= 300:
            text = answer[:300].decode("utf-8", "replace")
            raise SystemExit(f"{method} {path}: {response.status} {response.reason}: {text}")
    finally:
        conn.close()


def upload_all(api_url: str, task_id: str, root: Path) -> tuple[int, int]:
    """Upload every file under `root`; returns (files, bytes)."""
    base = urlsplit(api_url).path.rstrip("/")
    documents = f"{base}/api/tasks/{quote(task_id, safe='')}/documents"
    files = total = 0
    for rel, path in iter_files(root):
        content = path.read_bytes()  # the whole file in memory, as the old agent did
        body = document_body(rel, hashlib.sha256(content).hexdigest(), len(content))
        _request(api_url, "POST", documents, body.head, content, body.tail, body.content_type)
        files += 1
        total += len(content)
    status = json.dumps({"status": "COMPLETED", "message": f"{files} documents"}).encode()
    status_path = f"{base}/api/v1/tasks/{quote(task_id, safe='')}/status"
    _request(api_url, "PUT", status_path, b"", status, b"", "application/json")
    return files, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sequential", description=__doc__)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--root", required=True, type=Path)
    args = parser.parse_args(argv)
    files, total = upload_all(args.api_url, args.task_id, args.root)
    sys.stdout.write(json.dumps({"files": files, "bytes": total}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
