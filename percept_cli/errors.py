"""One exception tree for every user-facing failure, mapped to exit codes by the CLI."""

from __future__ import annotations


class PerceptError(Exception):
    """A failure the user can fix; its message is one line naming the thing and the fix."""

    exit_code = 1


class UsageError(PerceptError):
    """Invalid option value or combination (exit 2, like Typer's own usage errors)."""

    exit_code = 2


class InputError(PerceptError):
    """A missing, unreadable, corrupt or mismatched input file."""


class OutputError(PerceptError):
    """An output location that cannot be written."""


class ModelError(PerceptError):
    """An unknown model name, or a checkpoint that cannot be loaded."""


class ModelNotCachedError(ModelError):
    """A Hub model that is needed offline but is not in the local cache."""


class ChecksumError(ModelError):
    """A downloaded file whose size or sha256 differs from weights.lock."""


class DownloadError(ModelError):
    """The Hub (or HF_ENDPOINT) could not deliver a file."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none), for one-line errors."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip().rstrip(".:").strip()
    return type(exc).__name__
