"""Planning: dedupe by content, already-uploaded content, skips and failures kept in view."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from harvester.model import (
    Action,
    Digest,
    Failed,
    FileEntry,
    LedgerEntry,
    PlanItem,
    RemoteDocument,
    ScanResult,
    Skipped,
    SkipReason,
)
from harvester.pipeline.plan import Planner, build_plan


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


# -- deciding as the hashes come in --------------------------------------------------------------


def plan_as_before(
    scan: ScanResult,
    digests: list[Digest],
    failures: list[Failed],
    *,
    keep_duplicates: bool,
    remote: list[RemoteDocument],
    recorded: list[LedgerEntry],
) -> list[tuple[str, Action, str | None, str | None]]:
    """The batch plan's rules as they were before uploads overlapped the hashing (an oracle
    written out, not the code under test): every digest in sorted order, deduplicated by sha256."""
    in_ledger = {(entry.path, entry.sha256) for entry in recorded}
    remote_by_sha: dict[str, str] = {}
    for document in remote:
        remote_by_sha.setdefault(document.sha256, document.path)
    remote_pairs = {(document.path, document.sha256) for document in remote}
    first_path_of: dict[str, str] = {}
    rows: list[tuple[str, Action, str | None, str | None]] = []
    for d in sorted(digests, key=lambda d: d.rel_path):
        path, sha = d.rel_path, d.sha256
        if (d.entry.os_path, sha) in in_ledger:
            rows.append((path, Action.ALREADY_UPLOADED, None, "ledger"))
            first_path_of.setdefault(sha, path)
        elif keep_duplicates:
            held = (path, sha) in remote_pairs
            if held:
                rows.append((path, Action.ALREADY_UPLOADED, None, path))
            else:
                rows.append((path, Action.UPLOAD, None, None))
        elif first_path_of.setdefault(sha, path) != path:
            rows.append((path, Action.DUPLICATE, first_path_of[sha], None))
        elif sha in remote_by_sha:
            rows.append((path, Action.ALREADY_UPLOADED, None, remote_by_sha[sha]))
        else:
            rows.append((path, Action.UPLOAD, None, None))
    rows += [(s.rel_path, Action.SKIP, None, None) for s in scan.skipped]
    rows += [(f.rel_path, Action.FAIL, None, None) for f in (*scan.failed, *failures)]
    return sorted(rows)


def rows_of(plan_items: tuple[PlanItem, ...]) -> list[tuple[str, Action, str | None, str | None]]:
    rows = []
    for item in plan_items:
        note = item.reason
        if note is not None and note.startswith("recorded in the ledger"):
            note = "ledger"
        elif note is not None and note.startswith("on the server as "):
            note = note.removeprefix("on the server as ")
        elif note == "on the server":
            note = item.rel_path
        if item.action in (Action.SKIP, Action.FAIL, Action.UPLOAD, Action.DUPLICATE):
            note = None
        rows.append((item.rel_path, item.action, item.duplicate_of, note))
    return rows


@st.composite
def harvests(draw: st.DrawFn) -> dict[str, Any]:
    tree = draw(files)
    paths = sorted(tree)
    contents = sorted(set(tree.values()))
    failing = draw(st.sets(st.sampled_from(paths), max_size=len(paths) // 3))
    recorded = [
        LedgerEntry(
            path, hashlib.sha256(tree[path] + draw(st.sampled_from([b"", b"old"]))).hexdigest(), 0
        )
        for path in draw(st.sets(st.sampled_from(paths), max_size=len(paths) // 2))
    ]
    remote = [
        RemoteDocument(
            draw(st.sampled_from([*paths, "elsewhere.md"])), hashlib.sha256(content).hexdigest()
        )
        for content in draw(st.sets(st.sampled_from(contents), max_size=len(contents)))
    ]
    return {
        "tree": tree,
        "failing": failing,
        "recorded": recorded,
        "remote": remote,
        "keep_duplicates": draw(st.booleans()),
        "order": draw(st.permutations(range(len(paths)))),
    }


@given(harvests())
def test_the_plan_decided_as_hashes_come_in_is_the_batch_plan(case: dict[str, Any]) -> None:
    tree: dict[str, bytes] = case["tree"]
    entries = tuple(FileEntry(path, path, len(tree[path]), 1) for path in sorted(tree))
    results: list[Digest | Failed] = [
        Failed(e.rel_path, f"{e.rel_path}: cannot be read", e.size)
        if e.rel_path in case["failing"]
        else digest(e.rel_path, tree[e.rel_path])
        for e in entries
    ]
    digests = [r for r in results if isinstance(r, Digest)]
    failures = [r for r in results if isinstance(r, Failed)]
    scan = ScanResult(entries, (Skipped(".env", SkipReason.HIDDEN),), ())
    options: dict[str, Any] = {
        "keep_duplicates": case["keep_duplicates"],
        "remote": case["remote"],
        "recorded": case["recorded"],
    }

    planner = Planner(entries, **options)
    released: list[PlanItem] = []
    arrived: set[int] = set()
    for index in case["order"]:
        released += planner.add(index, results[index])
        arrived.add(index)
    incremental = planner.plan(scan)
    batch = build_plan(scan, digests, failures, **options)

    assert incremental == batch  # same items, same order, same actions and reasons
    assert rows_of(batch.items) == plan_as_before(scan, digests, failures, **options)
    # Every upload handed over exactly once: the very items of the plan.
    assert sorted(map(id, released)) == sorted(map(id, incremental.uploads))


@given(harvests())
def test_an_upload_is_handed_over_as_soon_as_no_earlier_path_of_its_size_waits(
    case: dict[str, Any],
) -> None:
    tree: dict[str, bytes] = case["tree"]
    entries = tuple(FileEntry(path, path, len(tree[path]), 1) for path in sorted(tree))
    options: dict[str, Any] = {
        "keep_duplicates": case["keep_duplicates"],
        "remote": case["remote"],
        "recorded": case["recorded"],
    }
    final = build_plan(
        ScanResult(entries, (), ()), [digest(p, c) for p, c in tree.items()], **options
    )
    uploads = {item.rel_path for item in final.uploads}
    planner = Planner(entries, **options)
    released: set[str] = set()
    arrived: set[int] = set()
    for index in case["order"]:
        released |= {
            item.rel_path
            for item in planner.add(
                index, digest(entries[index].rel_path, tree[entries[index].rel_path])
            )
        }
        arrived.add(index)
        final_now = {
            e.rel_path
            for i, e in enumerate(entries)
            if i in arrived
            and (
                case["keep_duplicates"]
                or all(j in arrived for j in range(i) if entries[j].size == e.size)
            )
        }
        assert released == final_now & uploads


def test_a_file_of_a_size_nobody_else_has_is_decided_when_hashed() -> None:
    entries = tuple(
        FileEntry(path, path, size, 1) for path, size in [("a.md", 1), ("b.md", 2), ("c.md", 1)]
    )
    planner = Planner(entries)
    assert [i.rel_path for i in planner.add(1, digest("b.md", b"bb"))] == ["b.md"]
    assert planner.add(2, digest("c.md", b"c")) == []  # a.md, of its size, may hold the same
    assert [i.rel_path for i in planner.add(0, digest("a.md", b"a"))] == ["a.md", "c.md"]


@given(st.permutations(range(4)))
def test_content_met_in_two_size_classes_is_deduplicated_within_each_whatever_the_order(
    order: list[int],
) -> None:
    # b.md and d.md were 9 bytes at the scan and hold a.md's 3 bytes when hashed (rewritten in
    # between): each size class keeps its own first path, whichever class is decided first.
    content = b"abc"
    sha = hashlib.sha256(content).hexdigest()
    scanned = [("a.md", 3), ("b.md", 9), ("c.md", 3), ("d.md", 9)]
    entries = tuple(FileEntry(path, path, size, 1) for path, size in scanned)
    results = [Digest(entry, sha, len(content), 1, 1, 1) for entry in entries]
    planner = Planner(entries)
    for index in order:
        planner.add(index, results[index])
    plan = planner.plan(ScanResult(entries, (), ()))

    assert [(i.rel_path, i.action, i.duplicate_of) for i in plan.items] == [
        ("a.md", Action.UPLOAD, None),
        ("b.md", Action.UPLOAD, None),
        ("c.md", Action.DUPLICATE, "a.md"),
        ("d.md", Action.DUPLICATE, "b.md"),
    ]
