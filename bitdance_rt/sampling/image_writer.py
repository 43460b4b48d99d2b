"""``ImageWriter``: finished images go to disk on a small thread pool (PNG encoding releases the GIL), so the
device keeps stepping while they are encoded. At most ``max_pending`` images wait; a failed write is raised in the
sampling loop, naming the file."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import SamplingError


class ImageWriter:
    def __init__(self, layout, tmp_dir: Path, threads: int = 2, max_pending: int = 64):
        self.layout, self.tmp_dir, self.max_pending = layout, Path(tmp_dir), max_pending
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bitdance-sample-writer")
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()
        self.written = 0      # images whose file is in place
        self.queued = 0       # images handed to the writer

    def put(self, index: int, pixels: np.ndarray) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, index, pixels))
        self.queued += 1

    def _write(self, index: int, pixels: np.ndarray) -> None:
        path = self.layout.image_path(index)
        try:
            self.layout.save(index, pixels, self.tmp_dir)
        except OSError as e:
            raise SamplingError(f"writing image {index} to {path} failed ({type(e).__name__}: {e.strerror or e}); "
                                "free space or fix the folder, then rerun the same command to resume.") from e
        with self._lock:
            self.written += 1

    def raise_errors(self) -> None:
        """Re-raise the first failed write among those finished."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def flush(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for the queued images (a failed one raises) and stop the threads."""
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
