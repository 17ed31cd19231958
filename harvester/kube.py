"""Everything the harvester asks of Kubernetes (the only module that imports `kubernetes`).

(Being written: see PERMISSIONS for the calls it makes.)
"""

from __future__ import annotations

from typing import NamedTuple


class Permission(NamedTuple):
    """One RBAC permission as a Role rule names it: API group, resource, verb."""

    api_group: str
    resource: str
    verb: str


# Every call this module makes, as RBAC sees it. deploy/'s Role must grant exactly these, and
# tests/test_deploy.py checks that it does: a new call here needs a new rule there.
PERMISSIONS: tuple[Permission, ...] = (
    Permission("", "pods", "get"),  # the source pod: which claim it mounts
    Permission("", "pods", "list"),  # live pods still using the claim before deleting it
    Permission("batch", "jobs", "get"),  # the main Job, when its pod is gone
    Permission("", "persistentvolumeclaims", "get"),  # the claim's UID and task-id label
    Permission("", "persistentvolumeclaims", "list"),  # by task-id label, when nothing else says
    Permission("", "persistentvolumeclaims", "delete"),  # the release itself
    Permission("", "persistentvolumeclaims", "patch"),  # --release-pvc-finalizer
    Permission("", "events", "create"),  # the story `kubectl describe pvc` tells
)
