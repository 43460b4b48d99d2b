"""Reading a user's input file line by line, with the line numbers its errors need."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import InputFileError


def read_input_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file is an ``InputFileError`` saying what it should be."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, None, f"does not exist; pass the {what}.")
    if path.is_dir():
        raise InputFileError(path, None, f"is a folder; pass the {what} (a file).")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputFileError(path, None, f"cannot be read ({e.strerror or e}).") from e


def numbered_lines(path: Path, data: bytes) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text without the line end)`` for every line of ``data`` (the contents of ``path``);
    a line that is not UTF-8 raises ``InputFileError`` naming it."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputFileError(path, number, f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                               f"{e.start + 1}); save the file as UTF-8.") from None
        yield number, text.removesuffix("\r")
