"""scan: real trees in tmp_path, with every kind of odd entry the design names."""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.errors import ConfigError
from harvester.model import Failed, FileEntry, ScanResult, Skipped, SkipReason
from harvester.pipeline.scan import ScanOptions, display_path, scan
from harvester.report import LogReporter
from harvester.stats import Level, NullListener, Stage, Tally
from tests.fstree import (
    make_char_device,
    make_fifo,
    make_socket,
    make_world_readable,
    no_access,
    run_unprivileged,
    write_bytes_name,
    write_tree,
)

DEFAULT = ScanOptions()


def paths(result: ScanResult) -> list[str]:
    return [entry.rel_path for entry in result.entries]


def reasons(result: ScanResult) -> dict[str, SkipReason]:
    return {skipped.rel_path: skipped.reason for skipped in result.skipped}


class Recorder:
    """A listener that writes down what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Stage, int, int]] = []

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        self.events.append(("started", stage, files, nbytes))

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        raise AssertionError(f"the scan's {stage} grew")

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        self.events.append(("advanced", stage, files, nbytes))

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        raise AssertionError(f"the scan reported a file failure: {message}")

    def notice(self, level: Level, message: str) -> None:
        pass

    def stage_finished(self, stage: Stage) -> None:
        self.events.append(("finished", stage, 0, 0))


# -- plain trees --------------------------------------------------------------------------------


def test_two_level_tree_gives_sorted_entries_with_lstat_data(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"b.txt": "bb", "a/z.md": "zzz", "a/b/c.csv": "1,2\n", "a.txt": "", "A.txt": "upper"},
    )
    result = scan(str(tmp_path), DEFAULT)
    assert paths(result) == ["A.txt", "a.txt", "a/b/c.csv", "a/z.md", "b.txt"]
    assert result.skipped == ()
    assert result.failed == ()
    assert result.root_exists
    for entry in result.entries:
        info = (tmp_path / entry.os_path).lstat()
        assert entry == FileEntry(entry.rel_path, entry.rel_path, info.st_size, info.st_mtime_ns)


def test_listener_hears_start_each_folders_kept_files_and_finish(tmp_path: Path) -> None:
    tree = {"a.txt": "12345", "c.txt": "1", "d/b.txt": "123", ".hidden": "x", "big.bin": "x" * 50}
    write_tree(tmp_path, tree)
    recorder = Recorder()
    scan(str(tmp_path), ScanOptions(max_file_size=10), recorder)
    assert recorder.events[0] == ("started", Stage.SCAN, 0, 0)
    assert recorder.events[-1] == ("finished", Stage.SCAN, 0, 0)
    # Once per folder (the lock and the call per file were a share of the scan's time).
    assert sorted(recorder.events[1:-1]) == [
        ("advanced", Stage.SCAN, 1, 3),
        ("advanced", Stage.SCAN, 2, 6),
    ]


def test_result_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = [f"d{i % 7}/f{(i * 37) % 101:03}.txt" for i in range(101)]
    write_tree(tmp_path / "one", {name: name for name in names})
    write_tree(tmp_path / "two", {name: name for name in reversed(names)})
    one, two = scan(str(tmp_path / "one"), DEFAULT), scan(str(tmp_path / "two"), DEFAULT)
    assert paths(one) == paths(two) == sorted(names)


def test_deep_tree_is_walked_to_the_bottom(tmp_path: Path) -> None:
    deep = "/".join(f"level{i}" for i in range(60)) + "/bottom.txt"
    write_tree(tmp_path, {deep: "deep", "top.txt": "top"})
    assert paths(scan(str(tmp_path), DEFAULT)) == [deep, "top.txt"]


def test_empty_root_gives_an_empty_result(tmp_path: Path) -> None:
    assert scan(str(tmp_path), DEFAULT) == ScanResult((), (), (), root_exists=True)


# -- links and special files --------------------------------------------------------------------


def test_links_are_skipped_and_never_followed(tmp_path: Path) -> None:
    outside = write_tree(tmp_path / "outside", {"secret.txt": "secret", "dir/inner.txt": "in"})
    root = write_tree(tmp_path / "root", {"real.txt": "real", "folder/doc.md": "doc"})
    (root / "to-outside-file").symlink_to(outside / "secret.txt")
    (root / "to-inside-file").symlink_to("real.txt")
    (root / "to-outside-dir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "folder" / "to-inside-dir").symlink_to("..", target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nowhere")

    result = scan(str(root), DEFAULT)

    assert paths(result) == ["folder/doc.md", "real.txt"]
    assert reasons(result) == {
        "dangling": SkipReason.SYMLINK,
        "folder/to-inside-dir": SkipReason.SYMLINK,
        "to-inside-file": SkipReason.SYMLINK,
        "to-outside-dir": SkipReason.SYMLINK,
        "to-outside-file": SkipReason.SYMLINK,
    }
    assert result.failed == ()


@pytest.mark.timeout(10)
def test_fifo_is_skipped_without_being_opened(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: if the scan opened it, the timeout
    # would fail this test instead of letting it hang.
    write_tree(tmp_path, {"a.txt": "a", "pipes/b.txt": "b"})
    make_fifo(tmp_path / "pipe")
    make_fifo(tmp_path / "pipes" / "nested-pipe")
    result = scan(str(tmp_path), DEFAULT)
    assert paths(result) == ["a.txt", "pipes/b.txt"]
    assert reasons(result) == {"pipe": SkipReason.FIFO, "pipes/nested-pipe": SkipReason.FIFO}


def test_socket_is_skipped(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": "a"})
    make_socket(tmp_path / "agent.sock")
    assert stat.S_ISSOCK((tmp_path / "agent.sock").lstat().st_mode)
    result = scan(str(tmp_path), DEFAULT)
    assert paths(result) == ["a.txt"]
    assert reasons(result) == {"agent.sock": SkipReason.SOCKET}


def test_device_is_skipped(tmp_path: Path) -> None:
    make_char_device(tmp_path / "null")
    result = scan(str(tmp_path), DEFAULT)
    assert result.entries == ()
    assert reasons(result) == {"null": SkipReason.DEVICE}


# -- hidden files, size, patterns ---------------------------------------------------------------


def hidden_tree(root: Path) -> Path:
    return write_tree(
        root,
        {
            "doc.md": "doc",
            ".env": "TOKEN=1",
            ".git/config": "[core]",
            ".git/objects/ab/cdef": "blob",
            "sub/.netrc": "machine",
            "sub/ok.txt": "ok",
        },
    )


def test_hidden_files_and_folders_are_skipped_once_by_default(tmp_path: Path) -> None:
    result = scan(str(hidden_tree(tmp_path)), DEFAULT)
    assert paths(result) == ["doc.md", "sub/ok.txt"]
    # The hidden folder is reported once, and nothing inside it was looked at.
    assert result.skipped == (
        Skipped(".env", SkipReason.HIDDEN),
        Skipped(".git", SkipReason.HIDDEN),
        Skipped("sub/.netrc", SkipReason.HIDDEN),
    )


def test_include_hidden_keeps_hidden_files_and_folders(tmp_path: Path) -> None:
    result = scan(str(hidden_tree(tmp_path)), ScanOptions(include_hidden=True))
    assert paths(result) == [
        ".env",
        ".git/config",
        ".git/objects/ab/cdef",
        "doc.md",
        "sub/.netrc",
        "sub/ok.txt",
    ]
    assert result.skipped == ()


def test_files_above_max_file_size_are_skipped_with_their_size(tmp_path: Path) -> None:
    write_tree(tmp_path, {"fits.bin": b"x" * 10, "big.bin": b"x" * 11, "d/huge.bin": b"x" * 99})
    result = scan(str(tmp_path), ScanOptions(max_file_size=10))
    assert paths(result) == ["fits.bin"]
    assert result.skipped == (
        Skipped("big.bin", SkipReason.TOO_LARGE, 11),
        Skipped("d/huge.bin", SkipReason.TOO_LARGE, 99),
    )
    unlimited = scan(str(tmp_path), ScanOptions(max_file_size=None))
    assert paths(unlimited) == ["big.bin", "d/huge.bin", "fits.bin"]


def test_negative_max_file_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max-file-size"):
        scan(str(tmp_path), ScanOptions(max_file_size=-1))


PATTERN_TREE = {
    "README.md": "r",
    "notes.txt": "n",
    "run.log": "l",
    "reports/2024/q1.md": "q",
    "reports/2024/q1.log": "q",
    "reports/summary.md": "s",
    "reports/draft-summary.md": "d",
    "build/out.md": "o",
    "build/deep/x.md": "x",
    "src/build/y.md": "y",
    "cache/a.bin": "a",
}


def test_exclude_by_base_name_at_any_depth(tmp_path: Path) -> None:
    result = scan(str(write_tree(tmp_path, PATTERN_TREE)), ScanOptions(exclude=("*.log",)))
    assert "run.log" not in paths(result)
    assert "reports/2024/q1.log" not in paths(result)
    assert reasons(result) == {
        "run.log": SkipReason.EXCLUDED,
        "reports/2024/q1.log": SkipReason.EXCLUDED,
    }


def test_excluded_folder_is_reported_once_and_pruned(tmp_path: Path) -> None:
    result = scan(str(write_tree(tmp_path, PATTERN_TREE)), ScanOptions(exclude=("build",)))
    # A base-name pattern prunes the folder at any depth.
    assert reasons(result) == {"build": SkipReason.EXCLUDED, "src/build": SkipReason.EXCLUDED}
    assert not any(path.startswith(("build/", "src/build/")) for path in paths(result))


def test_anchored_folder_patterns(tmp_path: Path) -> None:
    write_tree(tmp_path, PATTERN_TREE)
    for pattern in ("/build", "build/", "build/**", "/build/"):
        result = scan(str(tmp_path), ScanOptions(exclude=(pattern,)))
        if pattern.startswith("/") or "/*" in pattern:
            assert reasons(result) == {"build": SkipReason.EXCLUDED}, pattern
            assert "src/build/y.md" in paths(result), pattern
        else:  # "build/": folders named build at any depth
            assert reasons(result) == {
                "build": SkipReason.EXCLUDED,
                "src/build": SkipReason.EXCLUDED,
            }, pattern


def test_folder_only_pattern_leaves_files_of_that_name(tmp_path: Path) -> None:
    write_tree(tmp_path, {"cache": "a file named cache", "sub/cache/x.txt": "x"})
    result = scan(str(tmp_path), ScanOptions(exclude=("cache/",)))
    assert paths(result) == ["cache"]
    assert reasons(result) == {"sub/cache": SkipReason.EXCLUDED}


def test_double_star_matches_any_number_of_folders(tmp_path: Path) -> None:
    write_tree(tmp_path, PATTERN_TREE)
    result = scan(str(tmp_path), ScanOptions(exclude=("reports/**/*.md",)))
    assert [p for p in paths(result) if p.startswith("reports/")] == ["reports/2024/q1.log"]


def test_star_does_not_cross_folders(tmp_path: Path) -> None:
    write_tree(tmp_path, PATTERN_TREE)
    result = scan(str(tmp_path), ScanOptions(include=("reports/*.md",)))
    assert paths(result) == ["reports/draft-summary.md", "reports/summary.md"]
    assert reasons(result)["reports/2024/q1.md"] is SkipReason.NOT_INCLUDED


def test_include_keeps_only_matching_files_and_descends_everywhere(tmp_path: Path) -> None:
    write_tree(tmp_path, PATTERN_TREE)
    result = scan(str(tmp_path), ScanOptions(include=("*.md",), exclude=("draft-*", "cache")))
    assert paths(result) == [
        "README.md",
        "build/deep/x.md",
        "build/out.md",
        "reports/2024/q1.md",
        "reports/summary.md",
        "src/build/y.md",
    ]
    assert reasons(result) == {
        "cache": SkipReason.EXCLUDED,
        "notes.txt": SkipReason.NOT_INCLUDED,
        "reports/2024/q1.log": SkipReason.NOT_INCLUDED,
        "reports/draft-summary.md": SkipReason.EXCLUDED,
        "run.log": SkipReason.NOT_INCLUDED,
    }


def test_question_mark_and_classes(tmp_path: Path) -> None:
    write_tree(tmp_path, {"q1.md": "", "q2.md": "", "q3.md": "", "qa.md": "", "q10.md": ""})
    assert paths(scan(str(tmp_path), ScanOptions(include=("q?.md",)))) == [
        "q1.md",
        "q2.md",
        "q3.md",
        "qa.md",
    ]
    assert paths(scan(str(tmp_path), ScanOptions(include=("q[1-2].md", "q[!0-9].md")))) == [
        "q1.md",
        "q2.md",
        "qa.md",
    ]


@pytest.mark.parametrize("pattern", ["", "/", "//"])
def test_empty_pattern_is_a_config_error(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match="--exclude"):
        scan(str(tmp_path), ScanOptions(exclude=(pattern,)))


def test_backwards_range_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--include '\[z-a\]\*'.*backwards"):
        scan(str(tmp_path), ScanOptions(include=("[z-a]*",)))


# -- names --------------------------------------------------------------------------------------


def test_undecodable_name_is_shown_escaped_and_keeps_its_os_path(tmp_path: Path) -> None:
    write_bytes_name(tmp_path, b"bad\xffname.txt", b"content")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"dir\xfe"))
    write_bytes_name(os.path.join(os.fsencode(tmp_path), b"dir\xfe"), b"in%side\xc3.md", b"x")
    result = scan(str(tmp_path), DEFAULT)
    assert paths(result) == ["bad%FFname.txt", "dir%FE/in%25side%C3.md"]
    first, second = result.entries
    assert os.fsencode(first.os_path) == b"bad\xffname.txt"
    assert os.fsencode(second.os_path) == b"dir\xfe/in%side\xc3.md"
    with open(os.path.join(tmp_path, first.os_path), "rb") as found:
        assert found.read() == b"content"
    for entry in result.entries:
        entry.rel_path.encode("utf-8")  # printable: no surrogates left


def test_non_ascii_names_are_kept_as_they_are(tmp_path: Path) -> None:
    write_tree(tmp_path, {"レポート/結果.md": "結果", "café.txt": "c"})
    result = scan(str(tmp_path), DEFAULT)
    assert paths(result) == ["café.txt", "レポート/結果.md"]
    assert [entry.os_path for entry in result.entries] == paths(result)


def test_names_that_display_alike_do_not_share_a_path(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a%FF.txt": "valid name"})
    write_bytes_name(tmp_path, b"a\xff.txt", b"undecodable name")
    result = scan(str(tmp_path), DEFAULT)
    assert result.entries == (
        FileEntry("a%FF.txt", "a%FF.txt", 10, (tmp_path / "a%FF.txt").lstat().st_mtime_ns),
    )
    (failure,) = result.failed
    assert failure.rel_path == "a%FF.txt"
    assert "not valid UTF-8" in failure.error
    assert failure.size == len(b"undecodable name")


def test_display_path_examples() -> None:
    assert display_path("plain/ascii.txt") == "plain/ascii.txt"
    assert display_path("レポート/結果.md") == "レポート/結果.md"
    assert display_path(os.fsdecode(b"bad\xffname.txt")) == "bad%FFname.txt"
    assert display_path(os.fsdecode(b"ok%/bad%\xff")) == "ok%/bad%25%FF"
    assert display_path(os.fsdecode("ü".encode()[:1] + b"/x")) == "%C3/x"


@given(st.binary(min_size=1, max_size=12), st.binary(min_size=1, max_size=12))
def test_display_path_is_printable_and_tells_names_apart(one: bytes, two: bytes) -> None:
    one, two = one.replace(b"/", b"_"), two.replace(b"/", b"_")
    shown_one, shown_two = display_path(os.fsdecode(one)), display_path(os.fsdecode(two))
    assert shown_one.encode("utf-8").decode("utf-8") == shown_one
    try:
        assert shown_one == one.decode("utf-8")
        valid_one = True
    except UnicodeDecodeError:
        valid_one = False
    try:
        two.decode("utf-8")
        valid_two = True
    except UnicodeDecodeError:
        valid_two = False
    # Only a valid name can read like an undecodable one (the scan fails the latter, see above).
    if one != two and valid_one == valid_two:
        assert shown_one != shown_two


# -- the root and unreadable parts --------------------------------------------------------------


def test_missing_root_is_not_an_error(tmp_path: Path) -> None:
    assert scan(str(tmp_path / "absent"), DEFAULT) == ScanResult((), (), (), root_exists=False)


def test_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    write_tree(tmp_path, {"file.txt": "x"})
    with pytest.raises(ConfigError, match=r"file\.txt: the documents root is not a folder"):
        scan(str(tmp_path / "file.txt"), DEFAULT)


def test_unreadable_root_is_a_config_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", {"locked/a.txt": "a"})
    make_world_readable(root)

    def scan_locked() -> ScanResult:
        return scan("locked", DEFAULT)

    with no_access(root / "locked"), pytest.raises(ConfigError, match="permission denied"):
        run_unprivileged(root, scan_locked, denied=["locked"])


def test_unlistable_folder_fails_instead_of_vanishing(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "tree", {"open/a.txt": "a", "locked/secret.txt": "s", "locked/d/x.txt": "x"}
    )
    make_world_readable(root)

    def scan_root() -> ScanResult:
        return scan(".", DEFAULT)

    with no_access(root / "locked"):
        result = run_unprivileged(root, scan_root, denied=["locked"])
    assert paths(result) == ["open/a.txt"]
    assert result.failed == (
        Failed(
            "locked",
            "locked: cannot be listed (permission denied); its files were not harvested — "
            "fix its mode or --exclude it",
        ),
    )


def test_unreadable_file_is_still_listed(tmp_path: Path) -> None:
    # The scan never opens files, so a file it cannot read is an entry; hashing reports it.
    root = write_tree(tmp_path / "tree", {"secret.txt": "s", "ok.txt": "o"})
    make_world_readable(root)

    def scan_root() -> ScanResult:
        return scan(".", DEFAULT)

    with no_access(root / "secret.txt"):
        result = run_unprivileged(root, scan_root, denied=["secret.txt"])
    assert paths(result) == ["ok.txt", "secret.txt"]
    assert result.failed == ()


def test_unlistable_folder_is_told_to_the_live_log_as_it_happens(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", {"open/a.txt": "a", "locked/secret.txt": "s"})
    make_world_readable(root)

    def scan_with_a_live_log() -> str:
        out = io.StringIO()
        tally = Tally()
        LogReporter(out, tally, interval=3600)
        scan(".", DEFAULT, tally)
        return out.getvalue()

    with no_access(root / "locked"):
        log = run_unprivileged(root, scan_with_a_live_log, denied=["locked"])
    lines = log.splitlines()
    failed = (
        "FAILED locked: cannot be listed (permission denied); its files were not harvested — "
        "fix its mode or --exclude it"
    )
    assert failed in lines
    finished = next(i for i, line in enumerate(lines) if line.startswith("scan finished:"))
    assert lines.index(failed) < finished, "the failure is shown while the scan runs"
    assert lines[finished].endswith(", 1 failed")


def test_a_stop_ends_the_scan_at_the_next_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "doc", {f"d{i:02}/f.md": "x" for i in range(50)})
    stop = threading.Event()

    class StopOnFirstFile(NullListener):
        def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
            if stage is Stage.SCAN and files:
                stop.set()

    result = scan(str(root), ScanOptions(), StopOnFirstFile(), stop=stop)
    assert len(result.entries) == 1
