"""Errors a user sees. Each one says what is wrong and where (file, line, key path)."""

from __future__ import annotations

import importlib


class CurateError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""


class MissingExtra(CurateError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ValidationFailed(CurateError):
    """The final data failed a critical expectation and the recipe has `validate.fail_on_error: true`.
    Raised after the run wrote everything (the data, the report saying what failed); `report` is
    the run's report. The CLI exits with EXIT_VALIDATION_FAILED."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


EXIT_VALIDATION_FAILED = 3  # 1: a bug, 2: bad input or environment (CurateError)


def require(module: str, extra: str, package: str | None = None):
    """Import `module`, or raise MissingExtra with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{package or module} is needed here but not installed. "
            f"Install it with: pip install 'curate-sft[{extra}]'"
        ) from exc
