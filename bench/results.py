"""What a scenario found, as plain data: contenders' runs, ratios, targets and checks.

Takes `Measurement`s from the contenders; gives medians (wall seconds, files/s, MB/s, CPU), the
peak RSS over all runs, ratios between contenders, figures per file and PASS/MISS verdicts
against the issues' targets.
`report.py` turns these into the table and the JSON; nothing here prints.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from bench.contenders import Measurement

__all__ = ["MB", "ContenderResult", "Figure", "Ratio", "ScenarioResult", "Target"]

MB = 1_000_000  # throughput and memory are shown in decimal MB, as the issue's targets are


@dataclass(slots=True)
class ContenderResult:
    """One contender's runs in one scenario (or why it did not run)."""

    key: str
    label: str
    runs: list[Measurement] = field(default_factory=list)
    skipped: str | None = None
    note: str = ""
    # wrk runs for a fixed time, so its figure is a rate; its "wall time" is the time that rate
    # needs for the scenario's files. `ideal` is computed, never run.
    rate_only: bool = False
    ideal_wall_s: float | None = None

    @property
    def measured(self) -> bool:
        return self.skipped is None and (bool(self.runs) or self.ideal_wall_s is not None)

    def files_per_s(self, scenario_files: int) -> float | None:
        if self.ideal_wall_s is not None:
            return scenario_files / self.ideal_wall_s
        if not self.runs:
            return None
        return statistics.median(m.files / m.wall_s for m in self.runs)

    def mb_per_s(self, scenario_bytes: int) -> float | None:
        if self.ideal_wall_s is not None:
            return scenario_bytes / self.ideal_wall_s / MB
        if not self.runs:
            return None
        return statistics.median(m.bytes / m.wall_s / MB for m in self.runs)

    def wall_s(self, scenario_files: int) -> float | None:
        if self.ideal_wall_s is not None:
            return self.ideal_wall_s
        if not self.runs:
            return None
        if self.rate_only:
            rate = self.files_per_s(scenario_files)
            return None if not rate else scenario_files / rate
        return statistics.median(m.wall_s for m in self.runs)

    def wall_range(self) -> tuple[float, float] | None:
        """The fastest and slowest run's wall seconds (not for rate-only or ideal rows)."""
        if not self.runs or self.rate_only:
            return None
        walls = [m.wall_s for m in self.runs]
        return min(walls), max(walls)

    def client_cpu_ms(self) -> float | None:
        """Median CPU milliseconds (user + system) the contender spent per file or request."""
        return self._per_file([m.client_cpu_s for m in self.runs])

    def server_cpu_ms(self) -> float | None:
        """Median CPU milliseconds the dev-api spent per file or request of this contender."""
        return self._per_file([m.server_cpu_s for m in self.runs])

    def _per_file(self, seconds: list[float | None]) -> float | None:
        values = [
            s / m.files * 1000
            for s, m in zip(seconds, self.runs, strict=True)
            if s is not None and m.files
        ]
        return statistics.median(values) if values else None

    def split(self) -> dict[str, float] | None:
        """Median seconds of the harvester's phases: start-up and exit, then its stages."""
        parts: dict[str, list[float]] = {}
        for run in self.runs:
            stages = run.detail.get("stage_seconds")
            inside = run.detail.get("internal_elapsed_s")
            if not isinstance(stages, dict):
                return None
            if isinstance(inside, int | float):
                parts.setdefault("start-up+exit", []).append(run.wall_s - inside)
            for stage, seconds in stages.items():
                parts.setdefault(str(stage), []).append(float(seconds))
        return {name: statistics.median(values) for name, values in parts.items()} or None

    def stage_rate(self, stage: str, amount: float) -> float | None:
        """Median of `amount` ÷ the seconds the harvester's `stage` took (files/s of upload)."""
        rates = []
        for run in self.runs:
            stages = run.detail.get("stage_seconds")
            seconds = stages.get(stage) if isinstance(stages, dict) else None
            if isinstance(seconds, int | float) and seconds > 0:
                rates.append(amount / seconds)
        return statistics.median(rates) if rates else None

    def peak_rss_mb(self) -> float | None:
        peaks = [m.peak_rss for m in self.runs if m.peak_rss is not None]
        return max(peaks) / MB if peaks else None

    def client_cpu_s(self) -> float | None:
        """Median CPU seconds (user + system) of the contender's runs."""
        values = [m.client_cpu_s for m in self.runs if m.client_cpu_s is not None]
        return statistics.median(values) if values else None


@dataclass(frozen=True, slots=True)
class Ratio:
    """`numerator / denominator` of two contenders' figures, both kept to print beside it.

    `measure` names what both figures are ("files/s", "s", "MB/s"); the value is None when
    either contender did not run.
    """

    label: str
    numerator: float | None
    denominator: float | None
    measure: str
    unit: Literal["x", "fraction"] = "fraction"

    @property
    def value(self) -> float | None:
        if self.numerator is None or not self.denominator:
            return None
        return self.numerator / self.denominator


@dataclass(frozen=True, slots=True)
class Figure:
    """A figure derived from one contender's runs (memory or CPU per file), with the two
    figures it comes from said in `source`; the value is None when they are missing."""

    label: str
    value: float | None
    unit: str
    source: str


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets: `value <op> limit`; `n/a` when the value is missing."""

    label: str
    value: float | None
    op: Literal[">=", "<=", "<"]
    limit: float
    unit: str = ""

    @property
    def verdict(self) -> Literal["PASS", "MISS", "n/a"]:
        if self.value is None:
            return "n/a"
        ok = {
            ">=": self.value >= self.limit,
            "<=": self.value <= self.limit,
            "<": self.value < self.limit,
        }[self.op]
        return "PASS" if ok else "MISS"


@dataclass(slots=True)
class ScenarioResult:
    """Everything one scenario measured and concluded."""

    name: str
    description: str
    files: int
    bytes: int
    runs: int
    contenders: list[ContenderResult] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    limits: str = ""
    # What the scenario counts ("file"; "Job" for the controller's), and whose targets it checks.
    item: str = "file"
    issue: str = "issue 4"

    def contender(self, key: str) -> ContenderResult:
        for contender in self.contenders:
            if contender.key == key:
                return contender
        raise KeyError(key)
