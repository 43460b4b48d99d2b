"""The ranks' status board: one small JSON file per rank in the output folder's ``.status/`` (rewritten
atomically), holding the run's id, the rank's phase (``loading`` -> ``ready`` -> ``sampling`` -> ``done``, or
``failed`` with the error, or ``stopped``) and how many images it has written.

It carries what collectives cannot: a rank that fails says so here before it exits, and the others, which read the
board between scheduler rounds (and while they wait for each other), stop with an error naming it instead of
waiting in a collective for a rank that will never come. A rank that dies without a word (killed) is named when
the wait for it passes its timeout. Rank 0 also sums the counts for the whole job's progress bar. Files of an
earlier run (another run id) are ignored.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .atomic_files import write_text
from .errors import PeerFailed, SamplingError

PHASES = ("loading", "ready", "sampling", "done")
ENDED_BADLY = ("failed", "stopped")
POLL_S = 0.5


class StatusBoard:
    def __init__(self, folder: Path, run_id: str, rank: int, world: int, poll_s: float = POLL_S):
        self.folder, self.run_id, self.rank, self.world, self.poll_s = Path(folder), run_id, rank, world, poll_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self.phase, self.images = "loading", 0
        self._last_publish = 0.0
        self._last_check = 0.0

    # ---------------------------------------------------------------- this rank
    def path(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.json"

    def publish(self, phase: str | None = None, images: int | None = None, error: str | None = None) -> None:
        self.phase = phase or self.phase
        self.images = self.images if images is None else images
        status = {"run": self.run_id, "rank": self.rank, "phase": self.phase, "images": self.images,
                  "error": error, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        write_text(self.path(self.rank), json.dumps(status), self.folder)
        self._last_publish = time.monotonic()

    def publish_images(self, images: int) -> None:
        """The image count (written at most once per poll interval; the next ``publish`` carries it anyway)."""
        if images != self.images:
            self.images = images
            if time.monotonic() - self._last_publish >= self.poll_s:
                self.publish()

    # ---------------------------------------------------------------- the others
    def read(self) -> dict[int, dict]:
        statuses = {}
        for rank in range(self.world):
            try:
                status = json.loads(self.path(rank).read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if status.get("run") == self.run_id:
                statuses[rank] = status
        return statuses

    def _raise_if_peer_ended(self, statuses: dict[int, dict]) -> None:
        bad = {r: s for r, s in statuses.items() if r != self.rank and s.get("phase") in ENDED_BADLY}
        if not bad:
            return
        failed = [r for r, s in bad.items() if s["phase"] == "failed"]
        rank = failed[0] if failed else min(bad)
        s = bad[rank]
        where = f" on {s.get('host')} (pid {s.get('pid')})" if s.get("host") else ""
        raise PeerFailed(f"rank {rank}{where} {s['phase']}: {s.get('error') or 'no reason given'}. Rank "
                         f"{self.rank} stopped too; finished images are kept: rerun the same command to resume.",
                         rank)

    def check_peers(self, force: bool = False) -> None:
        """Raise ``PeerFailed`` when another rank failed or stopped (reads the board at most once per poll)."""
        if self.world == 1 or (not force and time.monotonic() - self._last_check < self.poll_s):
            return
        self._last_check = time.monotonic()
        self._raise_if_peer_ended(self.read())

    def wait_for(self, phase: str, timeout_s: float, on_poll=None) -> dict[int, dict]:
        """Wait until every rank has reached ``phase``; ``PeerFailed`` when one failed meanwhile,
        ``SamplingError`` naming the missing ranks after ``timeout_s``. ``on_poll(statuses)`` runs each poll."""
        target = PHASES.index(phase)
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.read()
            if on_poll is not None:
                on_poll(statuses)
            self._raise_if_peer_ended(statuses)
            behind = [r for r in range(self.world)
                      if statuses.get(r, {}).get("phase") not in PHASES[target:]]
            if not behind:
                return statuses
            if time.monotonic() > deadline:
                described = ", ".join(f"rank {r} ({statuses[r]['phase']}, {statuses[r]['images']} images)"
                                      if r in statuses else f"rank {r} (never reported)" for r in behind)
                raise SamplingError(f"rank {self.rank} waited {timeout_s:g} s for every rank to reach '{phase}'; "
                                    f"still missing: {described}. A rank that stopped without a word was probably "
                                    "killed (out of memory?): see its log. Finished images are kept: rerun the same "
                                    "command to resume (raise --timeout if a rank is just slow).")
            time.sleep(self.poll_s)

    def wait_until_others_ended(self, grace_s: float) -> None:
        """A failing rank's last act: give the others up to ``grace_s`` to read its failure and stop (so each says
        why before a launcher tears the job down)."""
        deadline = time.monotonic() + grace_s
        while self.world > 1 and time.monotonic() < deadline:
            statuses = self.read()
            if all(statuses.get(r, {}).get("phase") in ENDED_BADLY for r in range(self.world) if r != self.rank):
                return
            time.sleep(self.poll_s)
