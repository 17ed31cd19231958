"""Glob patterns for --include and --exclude, with the rules of .gitignore.

Takes the patterns as given on the command line and the option that gave them; gives a `GlobSet`
that says whether a file or a folder at a POSIX relative path matches, or a `ConfigError` naming
the option and the pattern when one cannot be used. The patterns are compiled once into at most
four regular expressions (base name or whole path, for files or for folders), so a path is
matched in two or three regex calls however many patterns there are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from harvester.errors import ConfigError

__all__ = ["GlobSet"]


class GlobSet:
    """Glob patterns compiled once, matched against POSIX relative paths.

    The rules are those of .gitignore: `*` and `?` never cross `/`; `**` as a whole path
    component matches any number of folders (`**/x`, `a/**/b`, `a/**`); `[abc]`, `[a-z]` and
    `[!a]` are character classes; a backslash makes the next character literal. A pattern without
    `/` matches the base name at any depth; one with a `/` (a leading `/` is dropped) matches the
    whole path from the root. A trailing `/` makes a pattern match folders only. A pattern that
    matches everything inside a folder (`build/**`) also matches the folder itself.
    """

    __slots__ = ("_dir_name", "_dir_path", "_file_name", "_file_path", "patterns")

    def __init__(self, patterns: Iterable[str] = (), *, option: str = "pattern") -> None:
        """Compile `patterns`; a `ConfigError` names `option` when one is invalid."""
        self.patterns = tuple(patterns)
        file_name: list[str] = []
        file_path: list[str] = []
        dir_name: list[str] = []
        dir_path: list[str] = []
        for pattern in self.patterns:
            regex, anchored, dir_only = _parse(pattern, option)
            (dir_path if anchored else dir_name).append(regex)
            if not dir_only:
                (file_path if anchored else file_name).append(regex)
        self._file_name = _combine(file_name, pattern_for=option)
        self._file_path = _combine(file_path, pattern_for=option)
        self._dir_name = _combine(dir_name, pattern_for=option)
        self._dir_path = _combine(dir_path, pattern_for=option)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"GlobSet({self.patterns!r})"

    def matches_file(self, rel_path: str) -> bool:
        """Whether a file at `rel_path` matches at least one pattern."""
        name = rel_path.rpartition("/")[2]
        return bool(
            (self._file_name is not None and self._file_name.fullmatch(name))
            or (self._file_path is not None and self._file_path.fullmatch(rel_path))
        )

    def matches_dir(self, rel_path: str) -> bool:
        """Whether a folder at `rel_path` matches at least one pattern."""
        name = rel_path.rpartition("/")[2]
        if self._dir_name is not None and self._dir_name.fullmatch(name):
            return True
        return self._dir_path is not None and bool(
            self._dir_path.fullmatch(rel_path) or self._dir_path.fullmatch(rel_path + "/")
        )


def _parse(pattern: str, option: str) -> tuple[str, bool, bool]:
    """A pattern's regex, whether it is anchored at the root, and whether it is for folders."""
    body = pattern
    dir_only = body.endswith("/")
    body = body.rstrip("/")
    anchored = "/" in body
    body = body.removeprefix("/")
    if not body:
        raise ConfigError(f"{option} {pattern!r}: an empty pattern matches nothing; remove it")
    return _glob_to_regex(body, pattern, option), anchored, dir_only


def _glob_to_regex(glob: str, pattern: str, option: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        ch = glob[i]
        if ch == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            whole_component = j - i >= 2 and (i == 0 or glob[i - 1] == "/")
            if whole_component and j < n and glob[j] == "/":
                out.append("(?:.*/)?")  # "**/": zero or more folders
                i = j + 1
            elif whole_component and j == n:
                out.append(".*")  # trailing "**": everything below
                i = j
            else:
                out.append("[^/]*")
                i = j
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            regex, i = _char_class(glob, i, pattern, option)
            out.append(regex)
        elif ch == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def _char_class(glob: str, start: int, pattern: str, option: str) -> tuple[str, int]:
    """Translate the class opening at `start`; a `[` that is never closed is a literal."""
    n = len(glob)
    j = start + 1
    negate = j < n and glob[j] in "!^"
    if negate:
        j += 1
    items: list[str] = []
    first = True
    while j < n and (glob[j] != "]" or first):
        first = False
        low = glob[j]
        if low == "\\" and j + 1 < n:
            j += 1
            low = glob[j]
        if j + 2 < n and glob[j + 1] == "-" and glob[j + 2] != "]":
            high = glob[j + 2]
            if high < low:
                raise ConfigError(
                    f"{option} {pattern!r}: the range {low}-{high} is backwards; write {high}-{low}"
                )
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            j += 3
        else:
            items.append(re.escape(low))
            j += 1
    if j >= n:
        return re.escape("["), start + 1
    body = "".join(items)
    # A class never matches the folder separator, as in .gitignore.
    return (f"[^/{body}]" if negate else f"(?!/)[{body}]"), j + 1


def _combine(regexes: list[str], *, pattern_for: str) -> re.Pattern[str] | None:
    if not regexes:
        return None
    try:
        return re.compile("|".join(f"(?:{regex})" for regex in regexes), re.DOTALL)
    except re.error as exc:  # pragma: no cover - _glob_to_regex escapes everything it emits
        raise ConfigError(f"{pattern_for}: a pattern cannot be used: {exc}") from exc
