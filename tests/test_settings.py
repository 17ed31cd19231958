"""Settings validation: every value a person can get wrong is refused with one sentence (exit 2
in the CLI, see tests/test_cli.py), and the token is never part of that sentence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harvester.errors import ConfigError
from harvester.settings import (
    MB,
    ClusterAccess,
    Settings,
    check_output_path,
    megabytes,
    read_token,
)
from tests.fstree import make_fifo

SECRET_PARTS = ("Zq7s3cr", "X-Evil")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("Zq7s3cr\nX-Evil: 1", "a line break at character 8"),
        ("Zq7s3cr\rX-Evil: 1", "a line break at character 8"),
        ("Zq7s3cr\x00X-Evil", "a NUL character at character 8"),
        ("Zq7s3cr\x7fX-Evil", "a control character at character 8"),
        ("Zq7s3cr\x1bX-Evil", "a control character at character 8"),
        ("Zq7s3cr\x85X-Evil", "a control character at character 8"),
        ("Zq7s3cr\tX-Evil", "a control character at character 8"),
        ("Zq7s3cr X-Evil", "a space at character 8"),
        ("Zq7s3cr\u20acX-Evil", "a non-ASCII character at character 8"),
        ("Zq7s3cr\u00e9X-Evil", "a non-ASCII character at character 8"),
        ("Zq7s3cr\u2028X-Evil", "a non-ASCII character at character 8"),
        # How Python hands over an environment variable that is not UTF-8.
        ("Zq7s3cr\udcffX-Evil", "a byte that is not UTF-8 at character 8"),
    ],
)
def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(
    token: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as from_env:
        read_token(None, f"  {token}\n")
    message = str(from_env.value)
    assert message.startswith("KERUTA_API_TOKEN: ")
    assert problem in message
    assert not any(part in message for part in SECRET_PARTS)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"Zq7s3cr\nX-Evil: 1\n", "a line break at character 8"),
        (b"Zq7s3cr\xe9X-Evil\n", "not UTF-8 (byte 8)"),
    ],
    ids=["two-lines", "latin-1"],
)
def test_a_token_file_is_checked_like_the_variable(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        read_token(token_file, None)
    message = str(refused.value)
    assert message.startswith(f"--token-file {token_file}: ")
    assert problem in message
    assert not any(part in message for part in SECRET_PARTS)


def test_surrounding_whitespace_of_a_token_is_trimmed(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"  # a Secret mounted as a file usually ends with a newline
    secret_file.write_text(" tok-1.2_3~A+/=\r\n", encoding="utf-8")
    assert read_token(secret_file, "ignored") == "tok-1.2_3~A+/="
    assert read_token(None, "\ttok-1\n") == "tok-1"
    assert read_token(None, " \n") is None
    assert read_token(None, None) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1", "not a valid URL (Invalid IPv6 URL)"),
        ("http://keruta-api:65536", "not a valid URL (Port out of range 0-65535)"),
        ("http://keruta-api:http", "not a valid URL (Port could not be cast"),
        ("http://keruta api:8080", "contains a space at character 14"),
        ("http://keruta-api:8080/\x07", "contains a control character at character 24"),
        ("http://keruta-api:8080?x=1", "must not carry a query (?) or a fragment (#)"),
        ("http://keruta-api:8080/#frag", "must not carry a query (?) or a fragment (#)"),
        ("http://keruta-api:8080/?", "must not carry a query (?) or a fragment (#)"),
    ],
)
def test_an_api_url_that_cannot_be_used_is_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"^--api-url ") as refused:
        Settings(task_id="t", api_url=url)
    assert problem in str(refused.value)


def test_an_api_url_with_credentials_is_refused_without_showing_them() -> None:
    for url in (
        "http://user:Zq7s3cr@keruta api:8080",
        "http://user:Zq7s3cr@[::1",
        "http://u:Zq7s3cr@h",
    ):
        with pytest.raises(ConfigError, match=r"^--api-url ") as refused:
            Settings(task_id="t", api_url=url)
        assert "Zq7s3cr" not in str(refused.value)


def test_api_url_and_task_id_lose_surrounding_whitespace() -> None:
    settings = Settings(task_id=" 123\n", api_url="http://keruta-api:8080\n")
    assert settings.task_id == "123"
    assert settings.api_url == "http://keruta-api:8080"


@pytest.mark.parametrize("task_id", ["12\n3", "12\t3", "12\x003", "12\x7f3", "12\x9b3"])
def test_a_task_id_with_a_control_character_is_refused(task_id: str) -> None:
    kind = "(a line break|a NUL character|a control character)"
    with pytest.raises(ConfigError, match=rf"^--task-id .*: contains {kind} at character 3"):
        Settings(task_id=task_id, api_url="http://keruta-api:8080")


def test_max_file_size_is_a_finite_size_or_0() -> None:
    assert megabytes(0) is None
    assert megabytes(1.5) == int(1.5 * MB)
    for bad in (-1.0, -0.5, math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match=r"^--max-file-size "):
            megabytes(bad)


def test_a_kubeconfig_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^KUBECONFIG .*: is a folder"):
        ClusterAccess.from_environment({"KUBECONFIG": str(tmp_path)})
    missing = ClusterAccess.from_environment({"KUBECONFIG": str(tmp_path / "none")})
    assert not missing.available  # no kubeconfig at all: no cluster, as before
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\n")
    assert ClusterAccess.from_environment({"KUBECONFIG": str(config)}).kubeconfig == str(config)


def test_an_output_path_is_checked_before_anything_is_sent(tmp_path: Path) -> None:
    check_output_path(tmp_path / "summary.json", "--summary-json")  # a new file: fine
    fifo = tmp_path / "fifo"
    make_fifo(fifo)
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    check_output_path(existing, "--summary-json")  # replaced: fine
    refusals = {
        tmp_path / "missing" / "summary.json": "the folder",
        tmp_path: "is a folder",
        existing / "summary.json": "is not a folder",
        fifo: "is not a regular file",
    }
    for path, problem in refusals.items():
        with pytest.raises(ConfigError) as refused:
            check_output_path(path, "--summary-json")
        assert str(refused.value).startswith(f"--summary-json {path}: ")
        assert problem in str(refused.value)
