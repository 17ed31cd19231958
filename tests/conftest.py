"""Shared fixtures: the dev-api on a real loopback port (see devapi_fixture.py)."""

from tests.devapi_fixture import dev_api, dev_api_factory

__all__ = ["dev_api", "dev_api_factory"]
