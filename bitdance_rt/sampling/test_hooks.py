"""Failure injection for the tests of resuming and of a failing rank (never set in real runs).

``BITDANCE_RT_SAMPLE_TEST_HOOK="ACTION:RANK:K"``: once rank RANK has handed K images to its writer, it waits for
them to be on disk and then
- ``exit``: ends the process at once with exit code 17 (``os._exit``: no cleanup, no status, like a kill);
- ``raise``: raises ``RuntimeError`` (a crash that the runner reports on the status board).
"""

from __future__ import annotations

import os

from ..errors import InvalidRequestError

ENV = "BITDANCE_RT_SAMPLE_TEST_HOOK"
EXIT_CODE = 17


class TestHook:
    __test__ = False  # not a pytest class

    def __init__(self, action: str | None = None, rank: int = -1, after: int = 0):
        self.action, self.rank, self.after = action, rank, after

    @classmethod
    def from_env(cls) -> "TestHook":
        value = os.environ.get(ENV)
        if not value:
            return cls()
        try:
            action, rank, after = value.split(":")
            hook = cls(action, int(rank), int(after))
        except ValueError:
            hook = cls("bad")
        if hook.action not in ("exit", "raise"):
            raise InvalidRequestError(f"{ENV}={value!r}: expected ACTION:RANK:K with ACTION exit or raise.")
        return hook

    def check(self, rank: int, writer) -> None:
        if self.action is None or rank != self.rank or writer.queued < self.after:
            return
        writer.flush()
        if self.action == "exit":
            os._exit(EXIT_CODE)
        raise RuntimeError(f"test hook: rank {rank} fails after {writer.written} images")
