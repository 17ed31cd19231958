"""The gate's table: which settings close which act (tests/test_api.py and tests/test_volume.py
show each act refused by the client and the volume, with no request made)."""

from __future__ import annotations

import pytest

from harvester.gate import Act, Gate, GateClosed


def test_an_open_gate_lets_every_act_through() -> None:
    for act in Act:
        Gate().check(act)


def test_a_dry_run_closes_every_act() -> None:
    for act in Act:
        with pytest.raises(GateClosed, match=rf"refused to {act}: dry run \(--dry-run\)"):
            Gate(dry_run=True).check(act)


def test_a_kept_pvc_closes_only_the_pvc_release() -> None:
    gate = Gate(keep_pvc=True)
    closed = {act for act in Act if gate.why_closed(act) is not None}
    assert closed == {Act.DELETE_PVC, Act.RELEASE_FINALIZER}
    assert gate.why_closed(Act.DELETE_PVC) == "kept (--keep-pvc)"
