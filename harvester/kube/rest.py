"""The Kubernetes API as plain JSON, through the official client's connection, auth and TLS.

Takes a `kubernetes.client.ApiClient` (kubeconfig or in-cluster, token refresh included); gives
`JsonApi.request` (one request, its answer as a dict) and `JsonApi.watch` (a watch request, its
events as dicts, one per line). Never the client's models: the controller reads every Job,
every change and every answer it writes, and turning those into models (pydantic validation of
each argument, then of each answer) cost three times the request itself (py-spy, issue 11). A
refusal is the client's own `ApiException` (with the server's status and body), so the callers'
`translate_error` reads it as before; an unreachable server is urllib3's `HTTPError`, as with the
generated API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

REQUEST_TIMEOUT = (5.0, 30.0)  # seconds: connect, read
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
_AUTH = ["BearerToken"]  # what the generated API asks for every call: the kubeconfig's token
# A watch event is one JSON object per line; a line longer than this is not an object the API
# server sends (its own limit on an object is 1.5 MiB, 3 MiB on the wire).
_LONGEST_LINE = 16 * 1024 * 1024


class JsonApi:
    """Requests by path, answered as dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        content_type: str = JSON,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """`method` on `path` (e.g. "/apis/batch/v1/namespaces/ns/jobs"); the answer's JSON.
        Raises `ApiException` for any answer but 2xx."""
        response = self._send(method, path, query, body, content_type, timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode("utf-8", "replace"), data=None
            )
        answer = json.loads(data) if data else {}
        return answer if isinstance(answer, dict) else {}

    def watch(
        self,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Watching:
        """A watch request on `path` (`watch=1` is added); iterate the answer for its events,
        close it to end the request early. Raises `ApiException` when the server refuses it."""
        response = self._send("GET", path, [*query, ("watch", "1")], None, JSON, timeout)
        if not 200 <= response.status <= 299:
            data = response.read()
            raise ApiException.from_response(
                http_resp=response, body=data.decode("utf-8", "replace"), data=None
            )
        return Watching(response)

    def _send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: Mapping[str, Any] | None,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        # param_serialize adds the auth header (refreshing an expiring token) and the host;
        # the body goes straight to the REST layer, which dumps it as JSON.
        method, url, headers, _, _ = self.api_client.param_serialize(
            method, path, query_params=list(query), header_params=headers, auth_settings=_AUTH
        )
        return self.api_client.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout
        )


class Watching:
    """An open watch request: iterating gives its events (`{"type": ..., "object": {...}}`),
    one per line, until the server ends it; `close` ends it from another thread too."""

    def __init__(self, response: Any) -> None:
        self._response = response  # the client's RESTResponse, over a urllib3 response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending = b""
        for chunk in self._response.response.stream(amt=None, decode_content=False):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
            if len(pending) > _LONGEST_LINE:
                raise ValueError(f"a watch event longer than {_LONGEST_LINE} bytes")
        if pending.strip():
            yield json.loads(pending)

    def close(self) -> None:
        raw = self._response.response
        raw.close()
        raw.release_conn()
