"""One rank's share of a sampling run, fed through the runtime's continuous-batching scheduler: up to two batches'
worth of requests are submitted (one image each, seed ``seed + index``), ``Runtime.step()`` advances them, and each
finished image goes to the writer while the next request takes its place. Between rounds the rank publishes its
count, reads the status board (another rank's failure stops it) and rank 0 updates the progress bar."""

from __future__ import annotations

from collections import deque
from typing import Callable

from ..errors import InvalidRequestError
from .errors import SamplingError


def sample_share(runtime, job, indices: list[int], batch_size: int, writer, board, hook, rank: int,
                 on_round: Callable[[], None] | None = None) -> None:
    """Make the images ``indices`` of ``job`` and hand them to ``writer``. On any error the requests still in
    flight are cancelled (the runtime stays usable) and the error is raised."""
    queue = deque(indices)
    inflight = {}
    depth = 2 * batch_size  # a second batch waits in the queue, so freed slots are refilled in the next round
    try:
        while queue or inflight:
            while queue and len(inflight) < depth:
                index = queue.popleft()
                try:
                    inflight[runtime.submit(job.request(index))] = index
                except InvalidRequestError as e:
                    raise InvalidRequestError(f"{job.where(index)}: {e}", param=e.param) from None
            runtime.step()
            for handle in [h for h in inflight if h.done]:
                index = inflight.pop(handle)
                if handle.status != "done":
                    try:
                        handle.result()
                    except Exception as e:
                        raise SamplingError(f"{job.where(index)} failed: {e}") from e
                writer.put(index, handle.result().images[0])
                hook.check(rank, writer)
            writer.raise_errors()
            board.publish_images(writer.written)
            board.check_peers()
            if on_round is not None:
                on_round()
    except BaseException:
        for handle in inflight:
            handle.cancel()
        raise
