"""Exceptions the library raises; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class PixclustError(Exception):
    """Base class of every error pixclust raises on purpose.

    The message is one line that says what went wrong and how to fix it.
    """

    exit_code = 1


class UsageError(PixclustError):
    """A parameter or input the user gave cannot be used."""

    exit_code = 2


class ModelUnavailableError(PixclustError):
    """A model's weights cannot be had (offline, missing file, wrong file)."""

    exit_code = 2


class NoImagesError(PixclustError):
    """Nothing usable was found where the user pointed pixclust."""

    exit_code = 2


class OutputNotWritableError(PixclustError):
    """The run folder cannot be created or written."""

    exit_code = 2


class RunFolderBusyError(PixclustError):
    """Another process is writing the run folder; one writer at a time."""

    exit_code = 3


class ClusterUnavailableError(PixclustError):
    """A compute cluster cannot do the work now (no room for a worker, nodes lost); the same command can resume."""

    exit_code = 3


class DecodeError(PixclustError):
    """One file could not be turned into an image; the run records it and goes on.

    ``reason`` is a short stable category (``"empty file"``, ``"corrupt or
    truncated"``, ...) that tables can group by; ``detail`` is the sentence a
    person reads.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        # Decode workers send these between processes; the default pickling would pass one argument.
        return DecodeError, (self.reason, self.detail)
