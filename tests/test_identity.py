"""A document is reported uploaded only when the server received that very file.

Two different files can print alike: a name that is not valid UTF-8 is shown (and sent) with its
odd bytes as %XX, so b"a\\xff" and the four-character name "a%FF" both read "a%FF". Receipts
are matched to the plan item they answer, never by that printed name, and a file whose name
would reach the server under another file's name fails on its own.
"""

from __future__ import annotations

import itertools
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import run_harvest
from harvester.model import Action, HarvestReport, Outcome
from harvester.report import report_to_json
from harvester.settings import Settings
from harvester.stats import NullListener
from tests.fstree import write_bytes_name

_task_numbers = itertools.count()


def harvest_names(dev_api: DevApiServer, files: dict[bytes, bytes]) -> tuple[str, HarvestReport]:
    """Harvest a fresh tree holding `files` ({raw name: content}) as a task of its own."""
    task_id = f"identity-{next(_task_numbers)}"
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            write_bytes_name(folder, name, content)
        settings = Settings(
            task_id=task_id, api_url=dev_api.url, root=folder, include_hidden=True, retries=0
        )
        return task_id, run_harvest(settings, NullListener()).report


def test_a_name_that_escapes_to_another_files_name_fails_alone(dev_api: DevApiServer) -> None:
    task_id, report = harvest_names(dev_api, {b"a%FF": b"plain name", b"a\xff": b"odd name"})

    (stored,) = dev_api.store.documents(task_id)
    assert stored.path == "a%FF"
    assert stored.size == len(b"plain name")
    outcomes = sorted((f.action, f.outcome) for f in report.files)
    assert outcomes == [(Action.FAIL, Outcome.FAILED), (Action.UPLOAD, Outcome.UPLOADED)]
    (failed,) = report.failures
    assert "reads the same as another file's" in (failed.error or "")
    assert "(its bytes: a\\xff)" in (failed.error or "")  # which of the two, unambiguously
    assert report.count(Outcome.UPLOADED) == 1
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED
    task = dev_api.store.task(task_id)
    assert task is not None and task.status == "FAILED"
    summary = report_to_json(report)
    assert sorted((f["action"], f["outcome"]) for f in summary["files"]) == [
        ("fail", "failed"),
        ("upload", "uploaded"),
    ]


# Pieces that make names valid and invalid UTF-8, escapes that collide, and characters that
# need quoting in a multipart header.
_PIECES = [b"a", b"%", b"F", b"\xff", b"\xc3", b"\xa9", b'"', b"\\", b" ", b"\n", b"."]
_NAMES = (
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5)
    .map(b"".join)
    .filter(lambda name: name not in (b".", b".."))
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(files=st.dictionaries(_NAMES, st.binary(max_size=6), min_size=1, max_size=6))
@example(files={b"a%FF": b"1", b"a\xff": b"2"})
@example(files={b"a%FF": b"same", b"a\xff": b"same"})
def test_every_file_reported_uploaded_was_received(
    dev_api: DevApiServer, files: dict[bytes, bytes]
) -> None:
    task_id, report = harvest_names(dev_api, files)

    received = [(doc.path, doc.sha256) for doc in dev_api.store.documents(task_id)]
    uploaded = [(f.path, f.sha256 or "") for f in report.files if f.outcome is Outcome.UPLOADED]
    assert sorted(uploaded) == sorted(received)
    assert len({path for path, _sha in uploaded}) == len(uploaded)
    # Every file is accounted for once, and only a file that was planned for upload can end
    # uploaded.
    assert len(report.files) == len(files)
    for f in report.files:
        assert (f.outcome is Outcome.UPLOADED) == (f.action is Action.UPLOAD)
    if report.failures:
        assert exit_code_for(report) is not ExitCode.OK
    # Every distinct content was either received or failed with a reason.
    received_content = {sha for _path, sha in received}
    for f in report.files:
        if f.outcome is Outcome.DUPLICATE:
            assert f.sha256 in received_content
