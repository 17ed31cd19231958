"""Shared fixtures: the dev-api and a Kubernetes API, each on a real loopback port."""

from tests.devapi_fixture import dev_api, dev_api_factory
from tests.kube_backends import control_plane, kube_api, real_api
from tests.kube_fixture import kube

__all__ = ["control_plane", "dev_api", "dev_api_factory", "kube", "kube_api", "real_api"]
