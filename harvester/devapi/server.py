"""A keruta-api stand-in that stores what it receives (`harvester dev-api`).

Takes a data folder, an optional bearer token, an optional artificial latency and whether to
serve the document listing and honour Idempotency-Key (both on unless switched off, to play a
keruta-api that does neither, as the real one does not promise them); gives a
Starlette app (`create_app`, its store `store_of(app)`) that speaks the keruta-api contract, a
`DevApiServer` that runs it on a loopback port in a background thread (tests, the demo,
benchmarks), and `serve_forever`, the foreground runner behind the CLI command.

What it serves:

- `POST /api/tasks/{taskId}/documents`: one multipart/form-data document per request, parsed as
  it streams in by an `UploadReceiver` (`harvester.devapi.receiver`); the `file` part lands in a
  content-addressed blob `<data_dir>/blobs/<sha256>`. Optional text parts `path`, `sha256` and
  `size` are checked against what arrived. `Idempotency-Key` replays the original document
  instead of storing it twice (unless `idempotency=False`: every request is a new document).
- `GET /api/tasks/{taskId}/documents` and `.../documents/{id}/content`: what was stored (with
  `listing=False` the listing is 404, as on a server without that route).
- `PUT /api/v1/tasks/{taskId}/status` and `GET /api/v1/tasks/{taskId}`: task status, validated as
  strictly as the current keruta-api (unknown keys and unknown statuses are rejected).

The contract's names (part names, Idempotency-Key, the status keys, `TaskStatus`) are the ones the
client sends, imported from `harvester.wire.contract` and `harvester.model`, never copied. What
was stored lives in a `DevApiStore` (`harvester.devapi.store`). A refused request is answered
with JSON `{"error", "message"}`.

A little over 400 lines: the routes and the uvicorn wrapper that serves them are read together
(how a handler's latency, errors and shutdown behave under the server); the store and the upload
parser, which stand alone, are modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import importlib.util
import json
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import uvicorn
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from harvester.devapi.receiver import Rejected, UploadReceiver
from harvester.devapi.store import DevApiStore, StoredDocument
from harvester.model import TaskStatus
from harvester.wire.contract import IDEMPOTENCY_KEY_HEADER, STATUS_KEYS

__all__ = ["DevApiServer", "create_app", "serve_forever", "store_of"]

_JSON_BODY_LIMIT: Final = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def _error(status_code: int, message: str) -> JSONResponse:
    phrase = http.HTTPStatus(status_code).phrase
    error = phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": error, "message": message}, status_code=status_code)


class _DevApi:
    """The endpoints, bound to one store, token and latency."""

    def __init__(
        self,
        store: DevApiStore,
        token: str | None,
        latency: float,
        *,
        listing: bool,
        idempotency: bool,
    ) -> None:
        self.store = store
        self._listing, self._idempotency = listing, idempotency
        self._token = None if token is None else token.encode("utf-8")
        self._latency = latency

    def guarded(self, handler: Handler) -> Handler:
        """Wrap an endpoint with the bearer-token check and the simulated latency."""

        async def endpoint(request: Request) -> Response:
            if self._token is not None and not self._authorized(request):
                response: Response = _error(
                    401, "a valid 'Authorization: Bearer <token>' header is required"
                )
            else:
                try:
                    response = await handler(request)
                except Rejected as exc:
                    response = _error(exc.status_code, str(exc))
            if self._latency > 0:
                await asyncio.sleep(self._latency)
            return response

        return endpoint

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        assert self._token is not None
        # Starlette decodes header bytes as Latin-1; encoding back gives the bytes as sent.
        sent = credentials.strip().encode("latin-1", errors="replace")
        return hmac.compare_digest(sent, self._token)

    async def upload(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        key = (request.headers.get(IDEMPOTENCY_KEY_HEADER) or None) if self._idempotency else None
        if key is not None:
            original = self.store.by_idempotency_key(task_id, key)
            if original is not None:
                # Read (and drop) the body so the connection stays usable for keep-alive.
                async for _chunk in request.stream():
                    pass
                return _replayed(original)
        media_type, params = parse_options_header(request.headers.get("content-type"))
        if media_type != b"multipart/form-data":
            raise Rejected(
                "documents are uploaded as multipart/form-data with a part named 'file'",
                status_code=415,
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise Rejected("the multipart/form-data Content-Type has no boundary")
        receiver = UploadReceiver(self.store.tmp_dir)
        try:
            parser = MultipartParser(boundary, receiver.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            return self._accept(task_id, key, receiver)
        except FormParserError as exc:
            raise Rejected(f"the multipart body is malformed: {exc}") from exc
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        finally:
            receiver.discard()

    def _accept(self, task_id: str, key: str | None, receiver: UploadReceiver) -> Response:
        path = receiver.checked_path()
        digest = receiver.sha256
        if key is not None:
            # A retry with the same key that raced this one and finished first; from here to
            # add_document nothing awaits, so no third request can slip in between.
            original = self.store.by_idempotency_key(task_id, key)
            if original is not None:
                return _replayed(original)
        receiver.commit(self.store.blob_path(digest))
        document, created = self.store.add_document(
            task_id,
            path=path,
            filename=receiver.filename or path,
            sha256=digest,
            size=receiver.size,
            content_type=receiver.content_type,
            idempotency_key=key,
        )
        if not created:
            return _replayed(document)
        return JSONResponse(document.to_json(), status_code=201)

    async def list_documents(self, request: Request) -> Response:
        if not self._listing:
            # As a keruta-api without the route answers (uploads share the path, so leaving the
            # route out would make the router say 405).
            raise Rejected("this server does not list documents (--no-listing)", status_code=404)
        documents = self.store.documents(request.path_params["task_id"])
        return JSONResponse([document.to_json() for document in documents])

    async def document_content(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        document_id: str = request.path_params["document_id"]
        document = self.store.document(task_id, document_id)
        if document is None:
            raise Rejected(f"task {task_id!r} has no document {document_id!r}", status_code=404)
        return FileResponse(self.store.blob_path(document.sha256), media_type=document.content_type)

    async def put_status(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > _JSON_BODY_LIMIT:
                raise Rejected("the status body is too large", status_code=413)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise Rejected(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise Rejected("the body must be a JSON object")
        unknown = [key for key in data if key not in STATUS_KEYS]
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            raise Rejected(
                f"unknown field {names} in the status body; allowed: {', '.join(STATUS_KEYS)}"
            )
        status = data.get("status")
        if not isinstance(status, str) or status not in tuple(TaskStatus):
            raise Rejected(f"invalid status {status!r}; allowed values: {', '.join(TaskStatus)}")
        message = data.get("message")
        if message is not None and not isinstance(message, str):
            raise Rejected("'message' must be a string")
        error_code = data.get("errorCode")
        if error_code is not None and not isinstance(error_code, str):
            raise Rejected("'errorCode' must be a string")
        progress = data.get("progress")
        if progress is not None and (
            isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100
        ):
            raise Rejected(f"'progress' must be an integer from 0 to 100, not {progress!r}")
        state = self.store.set_status(
            task_id, TaskStatus(status), message=message, progress=progress, error_code=error_code
        )
        return JSONResponse(state.to_json())

    async def get_task(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        state = self.store.task(task_id)
        if state is None:
            raise Rejected(f"task {task_id!r} not found", status_code=404)
        return JSONResponse(state.to_json(with_history=True))


def _replayed(document: StoredDocument) -> Response:
    return JSONResponse(document.to_json(), headers={"Idempotent-Replayed": "true"})


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        message = exc.detail or http.HTTPStatus(exc.status_code).phrase
        return _error(exc.status_code, f"{request.method} {request.url.path}: {message}")
    raise exc


async def _server_error(request: Request, exc: Exception) -> Response:
    # Still logged by uvicorn (Starlette re-raises after answering); the client gets JSON too.
    return _error(500, f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}")


def create_app(
    data_dir: Path,
    *,
    token: str | None = None,
    latency: float = 0.0,
    listing: bool = True,
    idempotency: bool = True,
) -> Starlette:
    """The dev-api as an ASGI app storing into `data_dir`; its store is `store_of(app)`.

    `token`: when set (and not empty), every route requires `Authorization: Bearer <token>`.
    `latency`: seconds every answer waits before it is sent, to imitate a remote server.
    `listing=False`: no document listing (404, as a server without the route answers);
    `idempotency=False`: Idempotency-Key is ignored, a repeated upload is stored again.
    """
    api = _DevApi(
        DevApiStore(data_dir),
        token or None,
        max(0.0, latency),
        listing=listing,
        idempotency=idempotency,
    )
    documents = "/api/tasks/{task_id}/documents"
    task = "/api/v1/tasks/{task_id}"
    app = Starlette(
        routes=[
            Route(documents, api.guarded(api.upload), methods=["POST"]),
            Route(documents, api.guarded(api.list_documents), methods=["GET"]),
            Route(
                documents + "/{document_id}/content",
                api.guarded(api.document_content),
                methods=["GET"],
            ),
            Route(task + "/status", api.guarded(api.put_status), methods=["PUT"]),
            Route(task, api.guarded(api.get_task), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.store = api.store
    return app


def store_of(app: Starlette) -> DevApiStore:
    """The store behind an app made by `create_app`."""
    store = app.state.store
    assert isinstance(store, DevApiStore)
    return store


def _uvicorn_config(app: Starlette, *, configure_logging: bool) -> uvicorn.Config:
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return uvicorn.Config(
        app,
        loop=loop,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Embedded in tests or the demo, leave the process's logging alone.
        log_config=uvicorn.config.LOGGING_CONFIG if configure_logging else None,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, stopping sooner and without re-raising SIGINT/SIGTERM afterwards.

    uvicorn re-sends a caught signal once it has shut down, which would turn a clean Ctrl-C into
    a KeyboardInterrupt (or kill the process on SIGTERM) in the caller; `serve_forever` returns
    instead and lets the CLI decide the exit code.
    """

    async def main_loop(self) -> None:
        # uvicorn notices `should_exit` only every 0.1 s; test suites start and stop many
        # servers, so look every 10 ms while keeping uvicorn's tick (date header) at 0.1 s.
        counter = 0
        while not await self.on_tick(counter):
            for _ in range(10):
                if self.should_exit:
                    break
                await asyncio.sleep(0.01)
            counter = (counter + 1) % 864000

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class DevApiServer:
    """The dev-api on a loopback port, served by uvicorn in a background thread.

    `start()` binds the socket, starts the thread and returns once connections are accepted;
    `url` and `store` are then ready. Also a context manager (start on enter, stop on exit).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        token: str | None = None,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        listing: bool = True,
        idempotency: bool = True,
    ) -> None:
        self.app = create_app(
            data_dir, token=token, latency=latency, listing=listing, idempotency=idempotency
        )
        self.store = store_of(self.app)
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:43123` (known once `start()` returned)."""
        if self._url is None:
            raise RuntimeError("the dev-api server is not started")
        return self._url

    def start(self, timeout: float = 10.0) -> Self:
        if self._thread is not None:
            raise RuntimeError("the dev-api server is already started")
        sock = _bind(self._host, self._port)
        server = _Server(_uvicorn_config(self.app, configure_logging=False))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="dev-api", daemon=True
        )
        self._sock, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the dev-api server did not start")
            time.sleep(0.002)
        self._url = _url(sock)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (idle keep-alive connections are closed) and release the port."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        self._url = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(
    host: str,
    port: int,
    data_dir: Path,
    token: str | None = None,
    latency: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
    *,
    listing: bool = True,
    idempotency: bool = True,
) -> None:
    """Serve the dev-api in the foreground until Ctrl-C or SIGTERM, then return.

    `on_ready(url)` is called once connections are accepted (port 0 picks a free port, which the
    URL names). Raises OSError when the address cannot be bound.
    """
    app = create_app(
        data_dir, token=token, latency=latency, listing=listing, idempotency=idempotency
    )
    config = _uvicorn_config(app, configure_logging=True)
    server = _Server(config)
    with _bind(host, port) as sock:
        url = _url(sock)

        async def run() -> None:
            serving = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.005)
            if server.started and on_ready is not None:
                on_ready(url)
            await serving

        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(run())
