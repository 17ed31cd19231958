"""One settings object for a harvest, every option documented once.

Takes the values the CLI collected (flags, then keruta environment variables, then the defaults
below); gives a validated, frozen `Settings` (what to harvest and how) and `Reporting` (how to
talk). Each field carries its `Flag`: flag names, environment variable, help, and its default as
a person types it; `cli.py` builds the command line from them, so each is said once here.
Nothing else in the package reads `os.environ`.

Longer than 400 lines because it is the option table: some thirty options, each with its help,
and the checks that refuse a bad value with one sentence, kept beside the options they check.
"""

from __future__ import annotations

import math
import os
import re
import ssl
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.errors import ConfigError
from harvester.stats import Level

DEFAULT_ROOT = "/.keruta/doc"
DEFAULT_DOCUMENTS_PATH = "/api/tasks/{taskId}/documents"
DEFAULT_STATUS_PATH = "/api/v1/tasks/{taskId}/status"
# --max-file-size counts in MiB (binary), the unit every size is printed in (report/text.py).
MB = 1024 * 1024


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, *, what: str) -> float:
    """'30s', '2m', '1h', '500ms' or plain seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{what}: {text!r} is not a duration; write e.g. 30s, 2m or 1.5")
    return float(match.group(1)) * _UNITS[match.group(2)]


NO_CLUSTER = "no Kubernetes cluster configured (not in a pod, no KUBECONFIG or ~/.kube/config)"
KUBECONFIG_FIX = "point KUBECONFIG at a valid kubeconfig file, or unset it"


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """How Kubernetes can be reached: from inside a pod, or through a kubeconfig file."""

    in_cluster: bool = False
    kubeconfig: str | None = None

    @property
    def available(self) -> bool:
        return self.in_cluster or self.kubeconfig is not None

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> ClusterAccess:
        """In a pod when KUBERNETES_SERVICE_HOST is set; else the first KUBECONFIG file (or
        ~/.kube/config) when it exists; else no cluster at all. A path that exists but is no
        file is a mistake, not "no cluster"."""
        if env.get("KUBERNETES_SERVICE_HOST"):
            return cls(in_cluster=True)
        first = (env.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0]
        path = Path(first).expanduser()
        if not path.exists():
            return cls()
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise ConfigError(
                f"KUBECONFIG {path}: is {what}, not a kubeconfig file; {KUBECONFIG_FIX}"
            )
        return cls(kubeconfig=str(path))


def megabytes(value: float) -> int | None:
    """--max-file-size in MiB -> bytes; 0 means no limit."""
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"--max-file-size {value}: write a size in MiB, e.g. 100 or 0.5 (0: no limit)"
        )
    return int(value * MB) if value > 0 else None


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting reaches the command line: its flag names, environment variable and help,
    the value as a person types it, and how that text becomes the setting (`parse`)."""

    names: tuple[str, ...]
    help: str
    envvar: str | None = None
    typed: Any = None
    parse: Callable[[Any], Any] | None = None
    low: float | None = None
    high: float | None = None

    def value(self, typed: Any) -> Any:
        return self.parse(typed) if self.parse is not None else typed


def option(
    *names: str,
    help: str,
    typed: Any,
    env: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A settings field with its `Flag`: the default is `typed` as parsed, so a default is
    written once, the way a person would type it."""
    flag = Flag(names, help, env, typed, parse, low, high)
    default = flag.value(typed)
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"{names[0]}: a mutable default; give a tuple")
    return field(default=default, metadata={"flag": flag})


def shared_option(cls: type, name: str) -> Any:
    """Field `name` of the settings class `cls` as a field of another one: the same flag, help
    and default, said once."""
    original = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return field(default=original.default, metadata=original.metadata)


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of the dataclass `cls` (as parsed from what a person types)."""
    return cls.__dataclass_fields__[name].default  # type: ignore[attr-defined]


def flags_of(cls: type) -> list[tuple[str, Flag]]:
    """(field name, Flag) of every field of the dataclass `cls` that has a flag, in order."""
    return [(f.name, f.metadata["flag"]) for f in fields(cls) if "flag" in f.metadata]


def _none_if_empty(text: str | None) -> str | None:
    return text or None


def _durations(what: str, *, zero_is_none: bool = False) -> Callable[[str], float | None]:
    def parse(text: str) -> float | None:
        seconds = parse_duration(text, what=what)
        return None if zero_is_none and not seconds else seconds

    return parse


def _patterns(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    return tuple(values or ())


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Reporting:
    """How a run talks: the log format, the interval of progress lines, the least level shown."""

    log_format: LogFormat = option(
        "--log-format",
        env="KERUTA_LOG_FORMAT",
        typed=LogFormat.TEXT,
        help="Progress and results as text or json lines.",
    )
    progress_interval: float = option(
        "--progress-interval",
        typed=5.0,
        low=0.1,
        help="Seconds between progress lines when not on a terminal (kubectl logs).",
    )
    log_level: Level = option(
        "--log-level",
        env="KERUTA_LOG_LEVEL",
        typed=Level.INFO,
        help="debug, info, warning or error.",
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated harvest configuration: every option with its flag, environment variable,
    default and help, once (cli.py builds the flags from these fields). The token never shows
    in repr()."""

    task_id: str = option(
        "--task-id",
        env="KERUTA_TASK_ID",
        typed="",
        help="The keruta task whose documents are harvested.",
    )
    api_url: str = option(
        "--api-url",
        env="KERUTA_API_URL",
        typed="",
        help="Base URL of keruta-api, e.g. http://keruta-api:8080.",
    )
    token: str | None = field(default=None, repr=False)
    source_pod: str | None = option(
        "--source-pod",
        env="KERUTA_SOURCE_POD",
        typed="",
        parse=_none_if_empty,
        help="The main Job's pod; used to find the PVC to delete.",
    )
    pvc: str | None = option(
        "--pvc",
        env="KERUTA_PVC",
        typed="",
        parse=_none_if_empty,
        help="The PVC to delete after a complete harvest (default: found).",
    )
    keep_pvc: bool = option(
        "--keep-pvc", typed=False, help="Never delete the PVC, even after a complete harvest."
    )
    namespace: str | None = option(
        "--namespace",
        "-n",
        env="POD_NAMESPACE",
        typed="",
        parse=_none_if_empty,
        help="Kubernetes namespace (default: the pod's, else the kubeconfig's).",
    )
    own_pod: str | None = option(
        "--pod-name",
        env="POD_NAME",
        typed="",
        parse=_none_if_empty,
        help="This cleanup pod's name (downward API; default: the hostname, which is the pod's "
        "name in a pod); never counted as a user.",
    )
    force_delete_pvc: bool = option(
        "--force-delete-pvc",
        typed=False,
        help="Delete the PVC even when its task-id label names another task.",
    )
    release_pvc_finalizer: bool = option(
        "--release-pvc-finalizer",
        typed=False,
        help="After the delete, remove kubernetes.io/pvc-protection so the volume is released "
        "although the main Job's finished pods still name it (see deploy/README.md).",
    )
    root: str = option(
        "--root",
        env="KERUTA_ARTIFACTS_DIR",
        typed=DEFAULT_ROOT,
        help="The documents folder (mounted read-only).",
    )
    dry_run: bool = option(
        "--dry-run", typed=False, help="Show the plan as a table; send nothing, change nothing."
    )
    no_ledger: bool = option(
        "--no-ledger",
        env="KERUTA_NO_LEDGER",
        typed=False,
        help="Neither read nor write the ledger of accepted uploads (ConfigMaps owned by the "
        "PVC); re-runs then rely on keruta-api's listing and Idempotency-Key.",
    )
    concurrency: int = option(
        "--concurrency",
        env="KERUTA_CONCURRENCY",
        typed=8,
        low=1,
        high=256,
        help="Uploads in flight at once.",
    )
    include: tuple[str, ...] = option(
        "--include",
        typed=(),
        parse=_patterns,
        help="Only harvest files matching this glob (repeatable; ** crosses /).",
    )
    exclude: tuple[str, ...] = option(
        "--exclude",
        typed=(),
        parse=_patterns,
        help="Skip files and folders matching this glob (repeatable).",
    )
    include_hidden: bool = option(
        "--include-hidden",
        typed=False,
        help="Also harvest hidden files and folders (names with a dot).",
    )
    keep_duplicates: bool = option(
        "--keep-duplicates",
        typed=False,
        help="Upload every path, even when its content was already sent.",
    )
    max_file_size: int | None = option(
        "--max-file-size",
        env="KERUTA_MAX_FILE_SIZE",
        typed=100.0,
        parse=lambda value: megabytes(value),
        help="Skip files larger than this many MiB (0: no limit).",
    )
    timeout: float = option(
        "--timeout",
        env="KERUTA_TIMEOUT",
        typed="30s",
        parse=_durations("--timeout"),
        help="Timeout of one request without progress: 30s, 2m, 1.5 (seconds).",
    )
    retries: int = option(
        "--retries",
        env="KERUTA_RETRY_COUNT",
        typed=3,
        low=0,
        help="Retries of a request that failed transiently.",
    )
    deadline: float | None = option(
        "--deadline",
        env="KERUTA_DEADLINE",
        typed="1h",
        parse=_durations("--deadline", zero_is_none=True),
        help="Give up retrying after this long in all (e.g. 30m; 0: no deadline).",
    )
    summary_json: Path | None = option(
        "--summary-json",
        typed=None,
        help="Write the machine-readable result of the harvest here.",
    )
    documents_path: str = option(
        "--documents-path",
        env="KERUTA_DOCUMENTS_PATH",
        typed=DEFAULT_DOCUMENTS_PATH,
        help="Upload endpoint path; {taskId} is replaced.",
    )
    status_path: str = option(
        "--status-path",
        env="KERUTA_STATUS_PATH",
        typed=DEFAULT_STATUS_PATH,
        help="Status endpoint path; {taskId} is replaced.",
    )
    ca_cert: Path | None = option(
        "--ca-cert",
        env="KERUTA_CA_CERT",
        typed=None,
        help="For an https --api-url signed by a private CA: the CA certificates (PEM) to "
        "trust instead of the system's. No proxy is used: keruta-api is reached directly.",
    )
    cluster: ClusterAccess = field(default_factory=ClusterAccess)
    hash_workers: int = 4

    def __post_init__(self) -> None:
        # Values from the environment often end with a newline (a Secret or ConfigMap file, a
        # heredoc): surrounding whitespace is never meant, so it goes before anything is checked.
        object.__setattr__(self, "task_id", self.task_id.strip())
        object.__setattr__(self, "api_url", self.api_url.strip())
        if not self.task_id:
            raise ConfigError("--task-id (KERUTA_TASK_ID) is required and must not be empty")
        if any(ch in self.task_id for ch in "/?#") or self.task_id in (".", ".."):
            raise ConfigError(f"--task-id {self.task_id!r}: a task id cannot contain / ? or #")
        misfit = first_misfit(self.task_id, lambda ch: unicodedata.category(ch) not in ("Cc", "Cs"))
        if misfit:
            raise ConfigError(
                f"--task-id {self.task_id!r}: contains {misfit}; a task id is one line of "
                "printable characters, check how KERUTA_TASK_ID is set"
            )
        if not self.dry_run:
            check_api_url(self.api_url)
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"--concurrency {self.concurrency}: choose between 1 and 256")
        if self.retries < 0:
            raise ConfigError(f"--retries {self.retries}: cannot be negative")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be longer than 0")
        for name in ("documents_path", "status_path"):
            value = getattr(self, name)
            if not value.startswith("/") or "{taskId}" not in value:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r}: must start with / and contain {{taskId}}")
        if self.summary_json is not None:
            check_output_path(self.summary_json, "--summary-json")
        if self.ca_cert is not None:
            check_ca_cert(self.ca_cert)


# The options of `harvester watch` that mean what they mean for `cleanup`: their flags are
# `Settings`' own (a watch carries a `Settings`), so each is said once.
WATCH_SHARED = (
    "task_id",
    "api_url",
    "pvc",
    "namespace",
    "root",
    "concurrency",
    "include",
    "exclude",
    "include_hidden",
    "keep_duplicates",
    "max_file_size",
    "timeout",
    "retries",
    "summary_json",
    "documents_path",
    "no_ledger",
    "ca_cert",
)
# Editors' and writers' temporary files: never documents, but watched so that one renamed into
# place is sent at once.
DEFAULT_IGNORE = ("*.swp", "*~", ".#*", "*.tmp")


def _ignore_patterns(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """None (the flag not given) keeps the defaults; given patterns replace them; '' is none."""
    if values is None:
        return DEFAULT_IGNORE
    return tuple(value for value in values if value)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """What `harvester watch` adds to a harvest's `Settings` (in `harvest`): when a file counts
    as written, how the tree is followed, and which names are never documents."""

    harvest: Settings
    settle: float = option(
        "--settle",
        env="KERUTA_SETTLE",
        typed="2s",
        parse=_durations("--settle"),
        help="Send a file once its size and mtime held still this long (a file renamed into "
        "place is sent at once).",
    )
    poll: bool = option(
        "--poll",
        env="KERUTA_POLL",
        typed=False,
        help="Follow the tree by polling instead of inotify (NFS and RWX volumes, where "
        "another node's writes raise no events).",
    )
    poll_interval: float = option(
        "--poll-interval",
        typed="1s",
        parse=_durations("--poll-interval"),
        help="Time between two polls of the tree (with --poll, or after inotify was refused).",
    )
    ignore: tuple[str, ...] = option(
        "--ignore",
        typed=DEFAULT_IGNORE,
        parse=_ignore_patterns,
        help="Never send files matching this glob (repeatable; replaces the defaults "
        f"{' '.join(DEFAULT_IGNORE)}; --ignore '' for none).",
    )

    def __post_init__(self) -> None:
        if self.settle < 0:
            raise ConfigError(f"--settle {self.settle:g}s: cannot be negative")
        if self.poll_interval < 0.05:
            raise ConfigError(f"--poll-interval {self.poll_interval:g}s: at least 50ms")


TEMPLATE_CONFIG_MAP = "keruta-harvester-cleanup-job"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """What `harvester controller` watches and where it finds the cleanup Job template."""

    namespaces: tuple[str, ...] = option(
        "--namespace",
        "-n",
        typed=(),
        parse=_patterns,
        help="Watch main Jobs in this namespace (repeatable; default: the pod's, else the "
        "kubeconfig's).",
    )
    all_namespaces: bool = option(
        "--all-namespaces",
        "-A",
        typed=False,
        help="Watch main Jobs in every namespace (needs the ClusterRole variant of deploy/).",
    )
    selector: str = option(
        "--selector",
        "-l",
        env="KERUTA_JOB_SELECTOR",
        typed="app=keruta",
        help="Label selector of the main Jobs to watch.",
    )
    workers: int = option(
        "--workers",
        env="KERUTA_CONTROLLER_WORKERS",
        typed=8,
        low=1,
        high=64,
        help="Jobs handled at once (each Job always by the same worker, in order).",
    )
    leader_elect: bool = option(
        "--leader-elect/--no-leader-elect",
        typed=True,
        help="Act only while holding the Lease keruta-harvester-controller, so replicas never "
        "both act (needs the Role's leases rule).",
    )
    lease_duration: float = option(
        "--lease-duration",
        typed="15s",
        parse=_durations("--lease-duration"),
        help="How long a lease holds without renewal; a replica takes over after it runs out.",
    )
    metrics_bind_address: str = option(
        "--metrics-bind-address",
        env="KERUTA_METRICS_BIND_ADDRESS",
        typed=":8080",
        help="Where /healthz, /readyz and /metrics answer (host:port or :port; 0: off).",
    )
    pod_name: str | None = option(
        "--pod-name",
        env="POD_NAME",
        typed="",
        parse=_none_if_empty,
        help="This replica's pod name (downward API), in its lease identity; default: hostname.",
    )
    release_after: float | None = option(
        "--release-after",
        env="KERUTA_RELEASE_AFTER",
        typed="5m",
        parse=_durations("--release-after"),
        help="After a successful cleanup, remove the main Job and the cleanup Job this long after "
        "they finished (ttlSecondsAfterFinished), so their pods go and the claim is released "
        "(e.g. 5m; 0: at once).",
    )
    stuck_claim_after: float = option(
        "--stuck-claim-after",
        typed="15m",
        parse=_durations("--stuck-claim-after"),
        help="Report a claim (labelled like the Jobs) still Terminating this long after its "
        "deletion: a log line, an Event and a metric.",
    )
    report_failed: bool = option(
        "--report-failed",
        typed=False,
        help="Also set the task FAILED in keruta-api (errorCode MAIN_JOB_FAILED) when its main "
        "Job fails (nothing else does); needs --api-url and the token.",
    )
    api_url: str = option(
        "--api-url",
        env="KERUTA_API_URL",
        typed="",
        help="Base URL of keruta-api, for --report-failed.",
    )
    token: str | None = field(default=None, repr=False)
    ca_cert: Path | None = shared_option(Settings, "ca_cert")
    template_config_map: str = option(
        "--template-config-map",
        env="KERUTA_TEMPLATE_CONFIG_MAP",
        typed=TEMPLATE_CONFIG_MAP,
        help="ConfigMap (in each watched namespace) holding the cleanup Job template under "
        "the key cleanup-job.yaml.",
    )
    cluster: ClusterAccess = field(default_factory=ClusterAccess)

    def __post_init__(self) -> None:
        if self.all_namespaces and self.namespaces:
            raise ConfigError("--namespace and --all-namespaces exclude each other; choose one")
        if not self.selector.strip():
            raise ConfigError("--selector must not be empty; the default is app=keruta")
        if self.report_failed:
            check_api_url(self.api_url)
            if self.ca_cert is not None:
                check_ca_cert(self.ca_cert)
        if self.lease_duration < 3:
            raise ConfigError(f"--lease-duration {self.lease_duration:g}s: at least 3s")
        for namespace in self.namespaces:
            if not _DNS_LABEL.match(namespace):
                raise ConfigError(f"--namespace {namespace!r}: not a Kubernetes namespace name")


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def visible_ascii(ch: str) -> bool:
    """What an HTTP header value or a URL may hold as is: 0x21-0x7E, no space, no control."""
    return "!" <= ch <= "~"


def first_misfit(text: str, fits: Callable[[str], bool]) -> str | None:
    """'a line break at character 4' for the first character of `text` that does not fit.

    Names the kind of character and its place, never the character or its neighbours: the text
    may be a secret.
    """
    for place, ch in enumerate(text, start=1):
        if fits(ch):
            continue
        if ch in "\r\n":
            kind = "a line break"
        elif ch == "\0":
            kind = "a NUL character"
        elif "\udc80" <= ch <= "\udcff":  # how Python hands over a byte that is not UTF-8
            kind = "a byte that is not UTF-8"
        elif unicodedata.category(ch) == "Cc":
            kind = "a control character"
        elif ch == " ":
            kind = "a space"
        else:
            kind = "a non-ASCII character"
        return f"{kind} at character {place}"
    return None


API_URL_EXAMPLE = "write e.g. http://keruta-api:8080"
_USERINFO = re.compile(r"^([^:/?#]*://)[^/?#]*@")


def check_api_url(url: str) -> None:
    if not url:
        raise ConfigError(f"--api-url (KERUTA_API_URL) is required; {API_URL_EXAMPLE}")
    # Credentials are refused below; until then, messages show the URL without them.
    shown = repr(_USERINFO.sub(r"\1...@", url))
    misfit = first_misfit(url, visible_ascii)
    if misfit:
        raise ConfigError(
            f"--api-url {shown}: contains {misfit}; {API_URL_EXAMPLE} "
            "(a host name in its ASCII form, xn--...)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading the port is what refuses 70000 or :http
    except ValueError as exc:
        raise ConfigError(
            f"--api-url {shown}: not a valid URL ({exc}); {API_URL_EXAMPLE}"
        ) from None
    if parts.username or parts.password:
        raise ConfigError("--api-url must not carry credentials; use KERUTA_API_TOKEN")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--api-url {shown}: not an http(s) URL; {API_URL_EXAMPLE}")
    if "?" in url or "#" in url:
        # The API paths are appended to the URL as text: behind a query or a fragment they
        # would never reach the server as a path.
        raise ConfigError(
            f"--api-url {shown}: must not carry a query (?) or a fragment (#); "
            f"the API paths are appended to it; {API_URL_EXAMPLE}"
        )


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before anything is sent, a path a report cannot be written to at the end.

    The file is replaced atomically (a temporary file beside it, then a rename), so its folder
    must take new files and the path itself must be a regular file or not exist yet.
    """
    folder = path.parent
    if path.is_dir():
        problem = "is a folder; name a file in it, e.g. " + str(path / "summary.json")
    elif path.exists() and not path.is_file():
        problem = "is not a regular file, and it would be replaced; name a file in a folder"
    elif not folder.exists():
        problem = f"the folder {folder} does not exist; create it or choose another path"
    elif not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"the folder {folder} is not writable by this user"
    else:
        return
    raise ConfigError(f"{flag} {path}: {problem}")


def check_ca_cert(path: Path) -> None:
    """Refuse, before anything is sent, a --ca-cert that holds no CA certificate to trust."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        problem = "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    except IsADirectoryError:
        problem = "is a folder; name the CA's PEM file in it"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        return
    raise ConfigError(
        f"--ca-cert {path}: {problem}; give the PEM file of the CA that signed keruta-api's "
        "certificate"
    )


BEARER_RULE = (
    "a token is visible ASCII characters only, without spaces or line breaks "
    "(RFC 6750); write it again without them"
)


TOKEN_ENV = "KERUTA_API_TOKEN"  # noqa: S105 - the variable's name, not a token
# Not a setting of its own: it names where the token (a Settings field without a flag) is read.
TOKEN_FILE = Flag(
    ("--token-file",),
    "Read the keruta-api token from this file (else from KERUTA_API_TOKEN).",
    envvar="KERUTA_API_TOKEN_FILE",
    typed=None,
)


def read_token(token_file: Path | None, env_token: str | None) -> str | None:
    """The bearer token: from --token-file when given, else KERUTA_API_TOKEN; empty -> None.

    Surrounding whitespace (a Secret file's trailing newline) is trimmed; anything else that
    cannot go into an Authorization header is refused here, by its place, never shown.
    """
    if token_file is not None:
        source = f"--token-file {token_file}"
        try:
            data = token_file.read_bytes()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"{source}: cannot be read ({reason})") from exc
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source}: is not UTF-8 (byte {exc.start + 1}); {BEARER_RULE}"
            ) from None
        if not token:
            raise ConfigError(f"{source}: the file is empty")
    else:
        source = TOKEN_ENV
        token = (env_token or "").strip()
        if not token:
            return None
    misfit = first_misfit(token, visible_ascii)
    if misfit:
        raise ConfigError(f"{source}: the token contains {misfit}; {BEARER_RULE}")
    return token
