"""pytest fixtures that serve the dev-api on a real loopback port.

Wired into `tests/conftest.py` (`from tests.devapi_fixture import dev_api, dev_api_factory`).
`dev_api` is a started `DevApiServer` without token or latency, storing under the test's
`tmp_path`; `dev_api_factory(token=..., latency=..., listing=..., idempotency=...)` starts
more (each in its own folder). Every server started here is stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from harvester.devapi.server import DevApiServer


class DevApiFactory(Protocol):
    def __call__(
        self,
        *,
        token: str | None = None,
        latency: float = 0.0,
        listing: bool = True,
        idempotency: bool = True,
    ) -> DevApiServer: ...


@pytest.fixture
def dev_api_factory(tmp_path: Path) -> Iterator[DevApiFactory]:
    servers: list[DevApiServer] = []

    def start(
        *,
        token: str | None = None,
        latency: float = 0.0,
        listing: bool = True,
        idempotency: bool = True,
    ) -> DevApiServer:
        data_dir = tmp_path / f"dev-api-{len(servers)}"
        server = DevApiServer(
            data_dir, token=token, latency=latency, listing=listing, idempotency=idempotency
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def dev_api(dev_api_factory: DevApiFactory) -> DevApiServer:
    return dev_api_factory()
