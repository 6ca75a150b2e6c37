"""Errors a user sees. Each one says what is wrong and where (file, line, key path)."""

from __future__ import annotations

import importlib


class CurateError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""


class MissingExtra(CurateError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, package: str | None = None):
    """Import `module`, or raise MissingExtra with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{package or module} is needed here but not installed. "
            f"Install it with: pip install 'curate-sft[{extra}]'"
        ) from exc
