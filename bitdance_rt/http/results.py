"""The answer of a finished request, built once per request (images encoded on a worker thread, never on the event
loop), and the status summary of ``GET /v1/images/generations/{id}``.

A request that finished: 200 ``{"created", "data": [{"b64_json", "seed"}], "id", "seed", "output_format", "size"}``
(image j of a request with seed s has seed s + j: asking for that seed alone gives that image again). One that did
not, an error body saying what happened and what to do, never the internal exception (that goes to the server log
with the request id): cancelled by ``DELETE`` 409, at its deadline 504, by the shutdown 503, failed 500.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError
from .images import as_image_list, encode_b64
from .jobs import TERMINAL, Job

CLIENT_LEFT = 499  # nginx's "client closed request": counted in /metrics, never sent


def final_answer(job: Job) -> tuple[int, dict[str, Any]]:
    """(status, body) of a finished job; the first caller builds it (blocking: call it off the event loop)."""
    with job.final_lock:
        if job.final is None:
            job.final = _build(job)
        return job.final


def _build(job: Job) -> tuple[int, dict[str, Any]]:
    status = job.status
    if status == "done":
        out = job.handle.result(timeout=5.0)
        p = job.params
        seed = getattr(out, "seed", None)
        data = []
        for j, image in enumerate(as_image_list(out.images)):
            item: dict[str, Any] = {"b64_json": encode_b64(image, p.output_format, p.output_compression)}
            if seed is not None:
                item["seed"] = seed + j
            data.append(item)
        return 200, {"created": job.created, "data": data, "id": job.id, "seed": seed,
                     "output_format": p.output_format, "size": p.size}
    err = failure(job)
    return err.status, {"id": job.id, **err.body()}


def failure(job: Job) -> ApiError:
    """Why a job that ended without images has none."""
    step, total = job.progress()
    where = f"at AR step {step} of {total}"
    if job.status == "failed":
        return ApiError(500, f"generation of request {job.id} failed {where}; the server log has the cause under "
                        "this request id (a failed step fails the requests batched with it); the server goes on "
                        "serving, and retrying may succeed.",
                        code="generation_failed")
    reason = job.cancel_reason
    if reason == "deadline":
        limit = f" of {job.deadline_s:g} s" if job.deadline_s is not None else ""
        return ApiError(504, f"request {job.id} did not finish within its deadline{limit} and was cancelled "
                        f"{where}. Ask for a longer timeout, or retry when the server is less busy.",
                        code="deadline_exceeded")
    if reason == "shutdown":
        return ApiError(503, f"request {job.id} was cancelled {where} because the server is shutting down.",
                        code="request_cancelled")
    if reason == "disconnect":
        return ApiError(CLIENT_LEFT, f"request {job.id} was cancelled {where}: its client left.",
                        code="request_cancelled")
    return ApiError(409, f"request {job.id} was cancelled {where}.", code="request_cancelled")


def job_summary(job: Job) -> dict[str, Any]:
    """``GET /v1/images/generations/{id}``: status and progress; the images or the error once it ended (blocking
    when it has to build them)."""
    step, total = job.progress()
    status = job.status
    body: dict[str, Any] = {"id": job.id, "status": status, "created": job.created, "size": job.params.size,
                            "n": job.params.n, "progress": {"step": step, "total": total}}
    if status in TERMINAL:
        _, final = final_answer(job)
        body.update({k: v for k, v in final.items() if k in ("data", "error", "seed", "output_format")})
    return body
