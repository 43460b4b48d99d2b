"""Batching: the step-level API's scheduling, in plain Python (``Runtime.submit`` / ``step`` / ``start_worker``).

``RequestHandle`` (handle.py) is what a caller gets back for a submitted ``request.ImageRequest``; ``Scheduler``
(scheduler.py) queues requests by group, admits them under the limits (limits.py: ``max_batch``, the memory budget,
with byte counts asked of the runner), places them into free slots of their group's continuous batch (group.py,
slots.py) and steps every active request once per round; ``Worker`` (worker.py) runs the rounds in a background
thread; stats.py keeps the numbers ``Runtime.stats()`` reports. Every tensor belongs to the model runner
(``engine/runner.py``): this package asks it for work by request id, slot and AR step.
"""

from .handle import RequestCancelled, RequestFailed, RequestHandle

__all__ = ["RequestHandle", "RequestCancelled", "RequestFailed"]
