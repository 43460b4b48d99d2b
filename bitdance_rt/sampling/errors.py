"""Errors of bulk sampling. Every one says what was wrong, where (file and line, rank, folder) and what to do."""

from __future__ import annotations

from ..errors import BitDanceError, InvalidRequestError


class SamplingError(BitDanceError, RuntimeError):
    """A sampling run cannot start or go on: its output folder, its recorded settings, or another rank."""


class PeerFailed(SamplingError):
    """Another rank of the job failed (or vanished); this rank stopped. ``rank`` names the one that failed."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


class InputFileError(InvalidRequestError):
    """A prompts or labels file is malformed; the message names the file and the line."""

    def __init__(self, path, line: int | None, message: str, *, param: str | None = None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}", param=param)
        self.path = path
        self.line = line
