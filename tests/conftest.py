"""Shared fixtures: the dev-api and a Kubernetes API, each on a real loopback port."""

import os

import pytest

from tests.devapi_fixture import dev_api, dev_api_factory
from tests.kube_backends import (
    cacheless_plane,
    control_plane,
    kube_api,
    kubectl_fixture,
    needs_control_plane,
    real_api,
)
from tests.kube_fixture import kube

__all__ = [
    "cacheless_plane",
    "control_plane",
    "dev_api",
    "dev_api_factory",
    "kube",
    "kube_api",
    "kubectl_fixture",
    "real_api",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test-fast` (KERUTA_SKIP_CLUSTER): leave out what needs the control plane, quietly,
    rather than skip it one line at a time."""
    if not os.environ.get("KERUTA_SKIP_CLUSTER"):
        return
    left_out = [item for item in items if needs_control_plane(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not needs_control_plane(item)]
