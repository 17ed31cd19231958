"""The process exit codes: one table for every command, and the one function that maps a
harvest's report onto it."""

from enum import IntEnum

from harvester.model import HarvestReport, StepState


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    UPLOADS_FAILED = 3
    STATUS_FAILED = 4
    PVC_FAILED = 5
    AUTH_REJECTED = 6


def exit_code_for(report: HarvestReport) -> ExitCode:
    """The exit code of a finished harvest; the most serious condition wins."""
    if report.auth_rejected:
        return ExitCode.AUTH_REJECTED
    if report.dry_run:
        return ExitCode.OK
    if report.failures or report.interrupted:
        return ExitCode.UPLOADS_FAILED
    if report.status.state is not StepState.DONE:
        return ExitCode.STATUS_FAILED
    if report.pvc.state in (StepState.FAILED, StepState.REFUSED):
        return ExitCode.PVC_FAILED
    return ExitCode.OK


def watch_exit_code(report: HarvestReport) -> ExitCode:
    """The exit code of a finished `watch`: it sets no status and keeps the PVC, so only the
    token and the documents count."""
    if report.auth_rejected:
        return ExitCode.AUTH_REJECTED
    if report.failures or report.interrupted:
        return ExitCode.UPLOADS_FAILED
    return ExitCode.OK
