"""A recording proxy in front of a real API server whose audit log is out of reach.

Takes a kubeconfig's cluster entry (server, and its certificate authority); gives `ApiRecorder`,
a plain-HTTP server on 127.0.0.1 that forwards each request as it came (its bearer token too) to
that server over TLS, answers with the server's answer, and keeps an `ApiCall` for every
resource request. A kubeconfig pointed at it acts exactly as before; `calls` tells what was
asked. It serves ordinary requests only: a watch's stream would be held back until it ends.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.kube_fixture import ApiCall

# Headers that belong to one connection, not to the request or answer they travel with.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


def api_call(method: str, target: str, body: bytes, status: int) -> ApiCall | None:
    """The call a request made, as RBAC names it; None outside the resource API (discovery)."""
    url = urlsplit(target)
    parts = [part for part in url.path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        rest = rest[2:]  # namespaced: drop "namespaces/<name>" (as the API server's RequestInfo)
    if not rest:
        return None
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"  # a subresource, as "pods/status"
    watching = parse_qs(url.query).get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watching else "get" if name else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())
    decoded: Any = None
    if body:
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = body.decode(errors="replace")
    return ApiCall(
        verb=verb, group=group, resource=resource, name=name, body=decoded, status=status
    )


class ApiRecorder:
    """Forwards loopback HTTP to the API server in `cluster` (a kubeconfig's cluster entry,
    `{"server": ..., "certificate-authority"[-data]: ...}`) and records the calls."""

    def __init__(self, cluster: dict[str, Any]) -> None:
        server = urlsplit(cluster["server"])
        self._host = server.hostname or "127.0.0.1"
        self._port = server.port or 443
        self._prefix = server.path.rstrip("/")
        self._tls = _tls_context(cluster)
        self._lock = threading.Lock()
        self._calls: list[ApiCall] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ApiRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
        self._server.server_close()

    @property
    def calls(self) -> list[ApiCall]:
        with self._lock:
            return list(self._calls)

    def forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self._tls, timeout=60
        )
        try:
            connection.request(method, self._prefix + target, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            status, answer_headers = answer.status, answer.getheaders()
        finally:
            connection.close()
        call = api_call(method, target, body, status)
        if call is not None:
            with self._lock:
                self._calls.append(call)
        return status, answer_headers, data

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                status, answer_headers, data = recorder.forward(
                    self.command, self.path, headers, body
                )
                self.send_response(status)
                for key, value in answer_headers:
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the calls are the record; no line per request on stderr

        return Handler


def _tls_context(cluster: dict[str, Any]) -> ssl.SSLContext:
    if cluster.get("insecure-skip-tls-verify"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cluster.get("certificate-authority-data"):
        authority = base64.b64decode(cluster["certificate-authority-data"]).decode()
        return ssl.create_default_context(cadata=authority)
    if cluster.get("certificate-authority"):
        return ssl.create_default_context(cafile=cluster["certificate-authority"])
    return ssl.create_default_context()
