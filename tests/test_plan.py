"""Planning: dedupe by content, already-uploaded content, skips and failures kept in view."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from harvester.model import (
    Action,
    Digest,
    Failed,
    FileEntry,
    LedgerEntry,
    RemoteDocument,
    ScanResult,
    Skipped,
    SkipReason,
)
from harvester.pipeline.plan import build_plan


def digest(path: str, content: bytes) -> Digest:
    entry = FileEntry(path, path, len(content), 1)
    return Digest(entry, hashlib.sha256(content).hexdigest(), len(content), 1, 1, 1)


def scan_of(
    *digests: Digest, skipped: tuple[Skipped, ...] = (), failed: tuple[Failed, ...] = ()
) -> ScanResult:
    return ScanResult(tuple(d.entry for d in digests), skipped, failed)


def test_identical_content_is_uploaded_once_from_the_first_sorted_path() -> None:
    digests = [digest("b/copy.md", b"same"), digest("a/orig.md", b"same"), digest("c.md", b"x")]
    plan = build_plan(scan_of(*digests), digests)
    actions = {item.rel_path: (item.action, item.duplicate_of) for item in plan.items}
    assert actions == {
        "a/orig.md": (Action.UPLOAD, None),
        "b/copy.md": (Action.DUPLICATE, "a/orig.md"),
        "c.md": (Action.UPLOAD, None),
    }
    assert [item.rel_path for item in plan.items] == ["a/orig.md", "b/copy.md", "c.md"]
    assert plan.upload_bytes == len(b"same") + len(b"x")


def test_keep_duplicates_uploads_every_path() -> None:
    digests = [digest("a.md", b"same"), digest("b.md", b"same")]
    plan = build_plan(scan_of(*digests), digests, keep_duplicates=True)
    assert [item.action for item in plan.items] == [Action.UPLOAD, Action.UPLOAD]


def test_content_on_the_server_is_not_sent_again() -> None:
    digests = [digest("a.md", b"one"), digest("b.md", b"two"), digest("c.md", b"three")]
    remote = [
        RemoteDocument("a.md", digests[0].sha256),
        RemoteDocument("old-name.md", digests[1].sha256),
    ]
    plan = build_plan(scan_of(*digests), digests, remote=remote)
    by_path = {item.rel_path: item for item in plan.items}
    assert by_path["a.md"].action is Action.ALREADY_UPLOADED
    assert by_path["b.md"].action is Action.ALREADY_UPLOADED
    assert by_path["b.md"].reason == "on the server as old-name.md"
    assert by_path["c.md"].action is Action.UPLOAD


def test_skips_and_failures_stay_in_the_plan_in_path_order() -> None:
    ok = digest("m.md", b"m")
    plan = build_plan(
        scan_of(
            ok,
            skipped=(Skipped(".env", SkipReason.HIDDEN), Skipped("z.lnk", SkipReason.SYMLINK)),
            failed=(Failed("locked/", "locked/: cannot be listed"),),
        ),
        [ok],
        [Failed("b.bin", "b.bin: kept changing", 10)],
    )
    assert [(i.rel_path, i.action) for i in plan.items] == [
        (".env", Action.SKIP),
        ("b.bin", Action.FAIL),
        ("locked/", Action.FAIL),
        ("m.md", Action.UPLOAD),
        ("z.lnk", Action.SKIP),
    ]
    assert plan.with_action(Action.SKIP)[0].reason == str(SkipReason.HIDDEN)


files = st.dictionaries(
    st.from_regex(r"[a-z]{1,3}(/[a-z]{1,3}){0,2}\.md", fullmatch=True),
    st.binary(max_size=4),
    min_size=1,
    max_size=20,
)


@given(files, st.booleans())
def test_a_second_plan_after_a_complete_harvest_uploads_nothing(
    tree: dict[str, bytes], keep_duplicates: bool
) -> None:
    digests = [digest(path, content) for path, content in tree.items()]
    first = build_plan(scan_of(*digests), digests, keep_duplicates=keep_duplicates)
    server = [RemoteDocument(item.rel_path, item.sha256 or "") for item in first.uploads]
    second = build_plan(scan_of(*digests), digests, keep_duplicates=keep_duplicates, remote=server)
    assert second.uploads == ()
    assert {i.rel_path for i in second.items} == set(tree)
    # Every distinct content went up exactly once (or once per path with keep_duplicates).
    expected = len(tree) if keep_duplicates else len(set(tree.values()))
    assert len(first.uploads) == expected


def test_the_ledger_marks_a_path_with_the_same_content_already_uploaded() -> None:
    odd = Digest(
        FileEntry("bad%FF.md", "bad\udcff.md", 3, 1), hashlib.sha256(b"odd").hexdigest(), 3, 1, 1, 1
    )
    digests = [digest("a.md", b"a"), digest("b.md", b"changed"), digest("c.md", b"c"), odd]
    recorded = [
        LedgerEntry("a.md", digests[0].sha256, 1, "doc-1"),
        LedgerEntry("b.md", hashlib.sha256(b"before").hexdigest(), 6, "doc-2"),  # changed since
        LedgerEntry("elsewhere.md", digests[2].sha256, 1, "doc-3"),  # same content, other path
        LedgerEntry("bad\udcff.md", odd.sha256, 3, "doc-4"),  # keyed by the path as read
    ]
    remote = [RemoteDocument("c.md", digests[2].sha256)]
    plan = build_plan(
        scan_of(*digests), digests, remote=remote, recorded=recorded, recorded_in="ConfigMaps x-*"
    )
    assert {item.rel_path: (item.action, item.reason) for item in plan.items} == {
        "a.md": (Action.ALREADY_UPLOADED, "recorded in the ledger (ConfigMaps x-*)"),
        "b.md": (Action.UPLOAD, None),
        "c.md": (Action.ALREADY_UPLOADED, "on the server"),
        "bad%FF.md": (Action.ALREADY_UPLOADED, "recorded in the ledger (ConfigMaps x-*)"),
    }
