"""A minimal independent keruta-api: the second ceiling, which does no more per upload than a
fast real server must.

Takes a host and port; serves `POST /api/tasks/{taskId}/documents` (parses the multipart body
with python-multipart, hashes the file part with SHA-256, checks it against the `sha256` part,
answers 201 with an id), `GET` of the same path (what it received, for the benchmark's checks)
and `PUT /api/v1/tasks/{taskId}/status`. One uvicorn worker, no access log, nothing written to disk.

Why a second server: dev-api stores every blob on disk and checks idempotency keys, so it spends
more per request than a fast keruta-api would; measured only against it, the client's own cost
hides behind the server's (issue 13). This one is not the project's code (no import from
`harvester`), so a ceiling measured on it is independent of what it measures.

    python -m bench.fast_server --port 0     # prints "listening on http://127.0.0.1:PORT (...)"
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import socket
import sys
from collections import defaultdict

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_received: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
_ids = itertools.count(1)


async def upload(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    form = await request.form()
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            return JSONResponse({"message": "no file part"}, status_code=400)
        content = await file.read()
        sha256 = hashlib.sha256(content).hexdigest()
        if form.get("sha256") not in (None, sha256):
            return JSONResponse({"message": "sha256 does not match the content"}, status_code=400)
        document_id = f"doc-{next(_ids)}"
        path = str(form.get("path") or file.filename or "")
        _received[task_id].append({"id": document_id, "path": path, "sha256": sha256})
    finally:
        await form.close()
    return JSONResponse({"id": document_id}, status_code=201)


async def listing(request: Request) -> Response:
    return JSONResponse(_received.get(request.path_params["task_id"], []))


async def status(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/api/tasks/{task_id}/documents", upload, methods=["POST"]),
        Route("/api/tasks/{task_id}/documents", listing, methods=["GET"]),
        Route("/api/v1/tasks/{task_id}/status", status, methods=["PUT"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    print(f"listening on http://{host}:{port} (bench.fast_server)", flush=True, file=sys.stderr)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
