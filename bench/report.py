"""The benchmark's output: a plain-text table per scenario, and the same as JSON.

Takes `ScenarioResult`s and a few facts about the machine; gives `format_scenario` (lines of about
100 columns: contenders with their medians, then ratios with the absolute figures beside them,
figures per file, then the issue's targets with PASS/MISS) and `as_json` (everything, including
every run's raw figures). PASS/MISS is information, not an assertion: absolute speed drifts
with the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.results import MB, ContenderResult, Figure, Ratio, ScenarioResult, Target

__all__ = ["as_json", "format_scenario", "format_summary", "write_json"]

_OPS = {">=": "≥", "<=": "≤", "<": "<"}


def _num(value: float | None, digits: int = 2, *, grouped: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if grouped else f"{value:.{digits}f}"


def _figure(value: float | None, measure: str) -> str:
    if value is None:
        return "-"
    if measure == "files/s":
        return f"{value:,.0f} files/s"
    if measure == "s":
        return f"{value:.2f} s"
    return f"{value:,.1f} {measure}"


def _ratio_value(ratio: Ratio) -> str:
    value = ratio.value
    if value is None:
        return "-"
    return f"{value:.2f}x" if ratio.unit == "x" else f"{value:.2f}"


def _target_value(target: Target) -> str:
    if target.value is None:
        return "-"
    if target.unit == "MB":
        return f"{target.value:.0f} MB"
    if target.unit == "s":
        return f"{target.value:.2f} s"
    if target.unit == "x":
        return f"{target.value:.2f}x"
    if target.unit == "ms":
        return f"{target.value:.2f} ms"
    return f"{target.value:.2f}" if target.value != int(target.value) else f"{target.value:.0f}"


def _limit(target: Target) -> str:
    limit = f"{target.limit:g}"
    unit = {"MB": " MB", "s": " s", "x": "x", "ms": " ms"}.get(target.unit, "")
    return f"{_OPS[target.op]} {limit}{unit}"


def _figure_value(figure: Figure) -> str:
    if figure.value is None:
        return "-"
    digits = 0 if figure.value >= 100 else 1
    return f"{figure.value:,.{digits}f} {figure.unit}"


_LABEL = 26  # the contender column


def _header(item: str) -> str:
    return (
        f"  {'contender':<{_LABEL}} {'wall s':>7} {'min-max s':>11} {item + 's/s':>8} {'MB/s':>7} "
        f"{'peak RSS':>8} {f'CPU ms/{item}: client':>19} {'server':>7}"
    )


def _contender_row(result: ScenarioResult, contender: ContenderResult) -> str:
    label = contender.label[:_LABEL]
    if contender.skipped is not None:
        return (
            f"  {label:<{_LABEL}} {'-':>7} {'-':>11} {'-':>8} {'-':>7} {'-':>8} {'-':>19} {'-':>7}"
        )
    rss = contender.peak_rss_mb()
    span = contender.wall_range()
    spread = "" if span is None else f"{span[0]:.2f}-{span[1]:.2f}"
    return (
        f"  {label:<{_LABEL}} {_num(contender.wall_s(result.files)):>7} {spread or '-':>11} "
        f"{_num(contender.files_per_s(result.files), 0, grouped=True):>8} "
        f"{_num(contender.mb_per_s(result.bytes) if result.bytes else None, 1, grouped=True):>7} "
        f"{'-' if rss is None else f'{rss:.0f} MB':>8} "
        f"{_num(contender.client_cpu_ms(), 2, grouped=True):>19} "
        f"{_num(contender.server_cpu_ms(), 2, grouped=True):>7}"
    )


def format_scenario(result: ScenarioResult) -> list[str]:
    """The scenario's block of the printed table."""
    size = f" ({result.bytes / MB:,.1f} MB)" if result.bytes else ""
    runs = f"{result.runs} run{'s' if result.runs != 1 else ''}"
    lines = [f"{result.name}: {result.description}{size}; median of {runs} each"]
    lines.append(_header(result.item))
    lines += [_contender_row(result, contender) for contender in result.contenders]
    for contender in result.contenders:
        if contender.skipped is not None:
            lines.append(f"    {contender.label}: skipped: {contender.skipped}")
        elif contender.note:
            lines.append(f"    {contender.label}: {contender.note}")
    for contender in result.contenders:
        split = contender.split()
        if split:
            parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in split.items())
            lines.append(f"    {contender.label}, median seconds: {parts}")
    if result.ratios:
        lines.append(f"  {'ratio':<38} {'value':>7}  from")
        for ratio in result.ratios:
            source = (
                f"{_figure(ratio.numerator, ratio.measure)} / "
                f"{_figure(ratio.denominator, ratio.measure)}"
            )
            lines.append(f"  {ratio.label:<38} {_ratio_value(ratio):>7}  {source}")
    if result.figures:
        lines.append(f"  {'per ' + result.item:<38} {'value':>9}  from")
        for figure in result.figures:
            lines.append(f"  {figure.label:<38} {_figure_value(figure):>9}  {figure.source}")
    if result.targets:
        lines.append(f"  {f'target ({result.issue})':<38} {'value':>7}  {'wanted':<9} verdict")
        for target in result.targets:
            lines.append(
                f"  {target.label:<38} {_target_value(target):>7}  {_limit(target):<9} "
                f"{target.verdict}"
            )
    lines += [f"  check: {check}" for check in result.checks]
    if result.limits:
        lines.append(f"  limited by: {result.limits}")
    return lines


def format_summary(results: list[ScenarioResult]) -> list[str]:
    """One line per target across all scenarios."""
    lines = ["targets:"]
    for result in results:
        for target in result.targets:
            lines.append(
                f"  {target.verdict:<4}  {result.name:<11} {target.label:<36} "
                f"{_target_value(target):>8}  {_limit(target)}"
            )
    return lines


def _contender_json(result: ScenarioResult, contender: ContenderResult) -> dict[str, Any]:
    return {
        "label": contender.label,
        "note": contender.note,
        "skipped": contender.skipped,
        "median_wall_s": contender.wall_s(result.files),
        "files_per_s": contender.files_per_s(result.files),
        "mb_per_s": contender.mb_per_s(result.bytes),
        "peak_rss_mb": contender.peak_rss_mb(),
        "wall_range_s": contender.wall_range(),
        "client_cpu_ms_per_file": contender.client_cpu_ms(),
        "server_cpu_ms_per_file": contender.server_cpu_ms(),
        "harvester_split_s": contender.split(),
        "rate_only": contender.rate_only,
        "runs": [
            {
                "wall_s": run.wall_s,
                "files": run.files,
                "bytes": run.bytes,
                "peak_rss_mb": None if run.peak_rss is None else run.peak_rss / MB,
                "client_cpu_s": run.client_cpu_s,
                "server_cpu_s": run.server_cpu_s,
                "detail": run.detail,
            }
            for run in contender.runs
        ],
    }


def as_json(results: list[ScenarioResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, keyed by scenario and contender; `null` where a tool was missing."""
    return {
        "meta": meta,
        "scenarios": {
            result.name: {
                "description": result.description,
                "files": result.files,
                "bytes": result.bytes,
                "runs": result.runs,
                "contenders": {c.key: _contender_json(result, c) for c in result.contenders},
                "ratios": {
                    r.label: {
                        "value": r.value,
                        "numerator": r.numerator,
                        "denominator": r.denominator,
                        "measure": r.measure,
                    }
                    for r in result.ratios
                },
                "targets": [
                    {
                        "label": t.label,
                        "value": t.value,
                        "op": t.op,
                        "limit": t.limit,
                        "unit": t.unit,
                        "verdict": t.verdict,
                    }
                    for t in result.targets
                ],
                "figures": {
                    f.label: {"value": f.value, "unit": f.unit, "source": f.source}
                    for f in result.figures
                },
                "item": result.item,
                "issue": result.issue,
                "checks": result.checks,
                "limits": result.limits,
            }
            for result in results
        },
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
