"""Serving: the step-level API and continuous batching (``Runtime.submit`` / ``step`` / ``start_worker``).

``ImageRequest`` (request.py) is what a caller asks for; ``RequestHandle`` (handle.py) what it gets back;
``Scheduler`` (scheduler.py) queues requests by group, admits them under the limits (limits.py, memory.py),
prefills them into free slots of their group's continuous batch and steps every active request once per round
(group.py, slots.py; what differs by model family comes from ``bitdance_rt.families``); ``Worker`` (worker.py) runs the rounds in a background thread; previews
(preview.py) decode the tokens made so far; stats.py keeps the numbers ``Runtime.stats()`` reports.
"""

from .handle import RequestCancelled, RequestFailed, RequestHandle
from ..request import ImageRequest

__all__ = ["ImageRequest", "RequestHandle", "RequestCancelled", "RequestFailed"]
