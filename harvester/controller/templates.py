"""The cleanup Job template in force in each namespace, kept current by a watch on its ConfigMap.

Takes the `Change`s of a watch on the template ConfigMap (`JobsApi.template_watch`), a
`Listener` and a way to write an Event on the ConfigMap; gives `Templates.lookup(namespace)`:
the last good template there, or why there is none. A change is parsed once, when it comes, so
a Job that completes costs no read and no parse; a broken template is reported at once (a log
line and a `TemplateInvalid` Event on its ConfigMap), once per broken text, and the last good
one stays in force. A ConfigMap deleted, or without the key, leaves no template: no cleanup Job
starts there until it is back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from harvester.controller.cache import WatchedObjects
from harvester.controller.render import TEMPLATE_KEY, TemplateError, parse_template
from harvester.kube.watch import Change
from harvester.stats import Level, Listener

TemplateEvent = Callable[[str, str, str, str], None]  # namespace, ConfigMap, reason, message


@dataclass(frozen=True, slots=True)
class _Text:
    """The template key's text in a ConfigMap (None: the ConfigMap has no such key)."""

    value: str | None


class Templates:
    """The template of each namespace; fed by `follow`, read by `lookup` (from any thread)."""

    def __init__(
        self, config_map: str, scopes: int, listener: Listener, write_event: TemplateEvent
    ) -> None:
        self.config_map = config_map
        self._listener = listener
        self._write_event = write_event
        self._lock = threading.Lock()
        self._in_force: dict[str, dict[str, Any]] = {}  # namespace -> the last text that parsed
        self._config_maps = WatchedObjects(_text_of, scopes, on_change=self._changed)

    @property
    def synced(self) -> threading.Event:
        """Set once every watched namespace was listed."""
        return self._config_maps.synced

    def follow(self, changes: Iterable[Change]) -> None:
        """Take every change until the watch ends (on stop); raises what the watch raises."""
        self._config_maps.follow(changes)

    def take(self, change: Change) -> None:
        self._config_maps.take(change)

    def lookup(self, namespace: str) -> tuple[dict[str, Any] | None, str]:
        """The template in force in `namespace`, or None with why there is none."""
        with self._lock:
            good = self._in_force.get(namespace)
        if good is not None:
            return good, ""
        found = self._config_maps.get(namespace, self.config_map)
        text = found.value if found is not None else None
        source = self.source(namespace)
        if text is None:
            return None, (
                f"{source} has no key {TEMPLATE_KEY}: apply deploy/ in this namespace or pass "
                "--template-config-map"
            )
        return None, f"{source} key {TEMPLATE_KEY} is not a usable template: fix it"

    def source(self, namespace: str) -> str:
        """Where the template of `namespace` comes from, as log lines name it."""
        return f"ConfigMap {namespace}/{self.config_map}"

    def _changed(self, namespace: str, name: str, found: _Text | None) -> None:
        """The template's text changed (the cache tells real changes only): parsed once now."""
        if name != self.config_map:
            return
        text = found.value if found is not None else None
        if text is None:
            with self._lock:
                self._in_force.pop(namespace, None)
            return
        try:
            template = parse_template(text, source=f"{self.source(namespace)} key {TEMPLATE_KEY}")
        except TemplateError as exc:
            with self._lock:
                keeps = namespace in self._in_force
            self._broken(namespace, exc, keeps=keeps)
            return
        with self._lock:
            self._in_force[namespace] = template
        self._listener.notice(
            Level.INFO,
            f"controller: the cleanup Job template of {self.source(namespace)} is in force",
        )

    def _broken(self, namespace: str, problem: TemplateError, *, keeps: bool) -> None:
        keeping = (
            "the last good template stays in force"
            if keeps
            else "no cleanup Job can start until it is fixed"
        )
        message = f"{problem}; {keeping}"
        self._listener.notice(Level.ERROR, message)
        self._write_event(namespace, self.config_map, "TemplateInvalid", message)


def _text_of(config_map: dict[str, Any]) -> _Text:
    value = (config_map.get("data") or {}).get(TEMPLATE_KEY)
    return _Text(None if value is None else str(value))
