"""Rank 0's view of the whole job: a progress bar over every rank's images (their counts from the status board),
the job's images per second, and the summary printed at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class JobProgress:
    """A tqdm bar on stderr counting the images of every rank (rank 0 only; ``enabled=False``: silent)."""

    def __init__(self, total: int, already: int, enabled: bool):
        self.total, self.already = total, already
        self.shown = 0
        self.bar = None
        self._last_poll = 0.0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=already, unit="img", desc="sampling", smoothing=0.0,
                            file=sys.stderr, dynamic_ncols=True)

    def update(self, new_images: int) -> None:
        """``new_images``: images made by all ranks in this run so far."""
        if self.bar is not None and new_images > self.shown:
            self.bar.update(new_images - self.shown)  # the bar's rate is then the whole job's images/s
        self.shown = max(self.shown, new_images)

    def poll(self, count, interval_s: float = 0.5) -> None:
        """``update(count())`` at most once per ``interval_s`` (``count`` reads the status board)."""
        if self.bar is not None and time.monotonic() - self._last_poll >= interval_s:
            self._last_poll = time.monotonic()
            self.update(count())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class SampleSummary:
    """What a run did. ``per_rank``: images each rank made in this run; ``files``: what rank 0 wrote for the
    evaluator, in words (empty on other ranks)."""
    out: Path
    num_images: int
    new_images: int
    already_done: int
    seconds: float
    per_rank: list[int]
    world: int
    rank: int
    files: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.new_images / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"num_images": self.num_images, "new_images": self.new_images, "already_done": self.already_done,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 4),
                "per_rank": self.per_rank, "world_size": self.world}

    def text(self) -> str:
        ranks = ", ".join(f"rank {r}: {n}" for r, n in enumerate(self.per_rank))
        lines = [f"{self.num_images} images in {self.out}: {self.new_images} made now, {self.already_done} were "
                 f"already there; {self.seconds:.1f} s, {self.images_per_second:.2f} images/s on {self.world} "
                 f"rank(s) ({ranks})"]
        lines += [f"wrote {f}" for f in self.files]
        return "\n".join(lines)
