"""Exceptions raised by bitdance-rt.

Every error says what was wrong, where (file, key, argument) and what to do about it.
"""


class BitDanceError(Exception):
    """Base class of every error the runtime raises on purpose."""


class CheckpointError(BitDanceError, ValueError):
    """A model file is missing, truncated, or holds a wrong key, shape or setting."""


class InvalidRequestError(BitDanceError, ValueError):
    """An argument of a runtime call is out of range or inconsistent. ``param`` names the request field at fault
    when there is one (``"prompt"``, ``"size"``, ...), for APIs that report it."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class UnsupportedDeviceError(BitDanceError, RuntimeError):
    """The requested device or dtype is not available on this machine."""
