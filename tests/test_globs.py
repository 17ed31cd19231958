"""The --include/--exclude rules, held against the patterns directly (tests/test_scan.py holds
them against a scanned tree)."""

from __future__ import annotations

import fnmatch

from hypothesis import given
from hypothesis import strategies as st

from harvester.pipeline.globs import GlobSet


def test_glob_rules_directly() -> None:
    globs = GlobSet(["**/tmp/**", "/top.txt", "a/**/z", r"lit\*.txt", "x[/]y"])
    assert globs.matches_file("tmp/a")
    assert globs.matches_file("p/q/tmp/r/s")
    assert globs.matches_dir("p/tmp")
    assert not globs.matches_file("tmp")  # a file named tmp is not "inside tmp"
    assert globs.matches_file("top.txt")
    assert not globs.matches_file("sub/top.txt")
    assert globs.matches_file("a/z")
    assert globs.matches_file("a/b/c/z")
    assert not globs.matches_file("ab/z")
    assert globs.matches_file("lit*.txt")
    assert not globs.matches_file("litX.txt")
    assert not globs.matches_file("x/y")  # a class never matches the separator
    assert not GlobSet([])
    assert GlobSet(["[unclosed"]).matches_file("dir/[unclosed")


@given(
    pattern=st.text(alphabet="ab*?.", min_size=1, max_size=8),
    folder=st.sampled_from(["", "x/", "x/y/"]),
    name=st.text(alphabet="ab.", min_size=1, max_size=8),
)
def test_base_name_patterns_agree_with_fnmatch(pattern: str, folder: str, name: str) -> None:
    globs = GlobSet([pattern])
    assert globs.matches_file(folder + name) == fnmatch.fnmatchcase(name, pattern)
