"""``sample(settings, runtime=None)``: one bulk sampling run on this process's rank (a job of one rank without
``torchrun``).

1. Every rank reads the inputs (prompts or labels file); rank 0 checks the output folder and its ``run.json``
   (a rerun with other settings is refused) and shares the run's id (a collective).
2. Every rank loads its model on its own device (or uses ``runtime``), resolves the run against the model's
   family, and waits on the status board until all are ready.
3. Rank 0 lists the images the folder already holds and shares the indices still to make (a collective); rank r
   takes every world-th of them, so the shares stay even after a resume.
4. Each rank makes its share through its continuous batch (``rank_loop``), writing each image atomically as it is
   made; rank 0 shows the whole job's progress.
5. When every rank is done (status board, then a collective gathering the per-rank counts), rank 0 writes the
   evaluator's files (``layouts``) and records the run in ``run.json``.

Image i always uses seed ``seed + i``, so the output does not depend on the number of ranks or on how often the run
was interrupted. A failing rank marks itself failed on the board; the others stop with an error naming it.
"""

from __future__ import annotations

import datetime
import socket
import sys
import time
import uuid
from pathlib import Path

from ..errors import InvalidRequestError
from .distributed import RankContext, join_job, rank_device, requested_device_type
from .errors import PeerFailed, SamplingError
from .image_writer import ImageWriter
from .job import Job, JobInputs, read_inputs, resolve_job
from .layouts import layout_for
from .progress import JobProgress, SampleSummary
from .rank_loop import sample_share
from .run_record import (RECORD_FORMAT, STATUS_DIR, TMP_DIR, check_same_settings, clear_temporaries,
                         file_fingerprint, load_record, prepare_out_dir, remove_run_state, write_record)
from .settings import SampleSettings
from .status_board import StatusBoard
from .test_hooks import TestHook

FAILURE_GRACE_S = 10.0  # how long a failing rank waits for the others to read its failure before it exits


def sample(settings: SampleSettings, runtime=None) -> SampleSummary:
    """Run (or resume) the sampling job ``settings`` on this rank and return what it did. ``runtime``: a loaded
    ``Runtime`` to use instead of loading ``settings.model`` (its device, dtype, backend and ``max_batch`` are then
    the run's)."""
    inputs = read_inputs(settings)
    if runtime is None and settings.model is None:
        raise InvalidRequestError("no model: pass the model path (or a loaded runtime).", param="model")
    ctx = join_job(runtime.device.type if runtime is not None else requested_device_type(settings.device),
                   settings.timeout_s)
    clean = False
    try:
        summary = _Run(settings, inputs, runtime, ctx).run()
        clean = True
        return summary
    finally:
        ctx.close(clean)


class _Run:
    def __init__(self, settings: SampleSettings, inputs: JobInputs, runtime, ctx: RankContext):
        self.s, self.inputs, self.runtime, self.ctx = settings, inputs, runtime, ctx
        self.out = Path(settings.out)
        self.tmp = self.out / TMP_DIR
        self.record: dict | None = None
        self.board: StatusBoard | None = None

    def say(self, message: str) -> None:
        if self.ctx.rank == 0 and self.s.progress:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the phases
    def run(self) -> SampleSummary:
        run_id = self._shared(self._open_folder, "check the output folder")
        self.board = StatusBoard(self.out / STATUS_DIR, run_id, self.ctx.rank, self.ctx.world)
        self.board.publish("loading")
        try:
            return self._run_on_board()
        except BaseException as e:
            self._report_end(e)
            raise

    def _run_on_board(self) -> SampleSummary:
        ctx, board = self.ctx, self.board
        runtime = self.runtime if self.runtime is not None else self._load_runtime()
        job = resolve_job(self.inputs, runtime.family)
        board.publish("ready")
        board.wait_for("ready", self.s.timeout_s)
        layout = layout_for(self.out, job)
        plan = self._shared(lambda: self._plan(job, layout), "list the images still to make")
        todo, already = plan["todo"], plan["already"]
        mine = todo[ctx.rank::ctx.world]

        progress = JobProgress(job.num_images, already, self.s.progress and ctx.rank == 0)
        writer = ImageWriter(layout, self.tmp)
        board.publish("sampling", images=0)
        start = time.perf_counter()
        on_round = (lambda: progress.poll(lambda: self._job_count(writer.written))) if ctx.rank == 0 else None
        try:
            try:
                sample_share(runtime, job, mine, self.s.batch_size, writer, board, TestHook.from_env(), ctx.rank,
                             on_round)
            finally:
                writer.close()
                board.images = writer.written
            own_seconds = time.perf_counter() - start
            board.publish("done", images=writer.written)
            board.wait_for("done", self.s.timeout_s,
                           on_poll=lambda st: progress.update(sum(v.get("images", 0) for v in st.values())))
            seconds = time.perf_counter() - start
            progress.update(len(todo))
        finally:
            progress.close()
        counts = ctx.all_gather({"images": writer.written, "seconds": own_seconds})
        summary = SampleSummary(self.out, job.num_images, len(todo), already, seconds,
                                [c["images"] for c in counts], ctx.world, ctx.rank)
        if ctx.rank == 0:
            summary.files = layout.finalize(self.tmp)
            self.record["runs"][-1].update({"finished": True, **summary.as_dict()})
            self.record["complete"] = True
            write_record(self.out, self.record)
            remove_run_state(self.out)
        return summary

    def _shared(self, work, what: str):
        """``work()`` on rank 0, its result on every rank; an error there is raised on every rank."""
        result = None
        if self.ctx.rank == 0:
            try:
                result = {"ok": work()}
            except BaseException as e:
                self.ctx.broadcast({"error": f"{type(e).__name__}: {e}"})
                raise
        result = self.ctx.broadcast(result)
        if "error" in result:
            raise SamplingError(f"rank {self.ctx.rank}: rank 0 could not {what}: {result['error']}")
        return result["ok"]

    def _open_folder(self) -> str:
        """Rank 0: the folder checked, the recorded settings compared, leftovers cleared; a new run id."""
        prepare_out_dir(self.out)
        settings = self._identity()
        record = load_record(self.out)
        if record is not None:
            check_same_settings(record, settings, self.out)
        else:
            record = {"format": RECORD_FORMAT, "tool": "bitdance-rt sample", "settings": settings, "runs": [],
                      "complete": False}
        record["inputs"] = {"model": None if self.s.model is None else str(self.s.model),
                            "tokenizer": None if self.s.tokenizer is None else str(self.s.tokenizer),
                            "prompts": None if self.s.prompts is None else str(self.s.prompts),
                            "labels": None if self.s.prompts is not None else str(self.s.labels)}
        clear_temporaries(self.out)
        write_record(self.out, record)
        self.record = record
        return uuid.uuid4().hex

    def _identity(self) -> dict:
        """The settings a rerun must repeat: model, inputs, sampling values as asked, device kind, dtype,
        backend, batch size, quantization."""
        s = self.s
        if self.runtime is not None:
            rt = self.runtime
            platform = {"device_type": rt.device.type, "dtype": str(rt.dtype).removeprefix("torch."),
                        "backend": rt.backend, "max_batch": rt.describe()["serving"]["max_batch"]}
            model = file_fingerprint(s.model) if s.model is not None else \
                {"in_memory": rt.describe()["parameters"]}
        else:
            from ..platform import resolve_backend, resolve_device, resolve_dtype

            device = resolve_device(rank_device(s.device, self.ctx) if self.ctx.world > 1 else s.device)
            platform = {"device_type": device.type,
                        "dtype": str(resolve_dtype(s.dtype, device)).removeprefix("torch."),
                        "backend": resolve_backend(s.backend, device), "max_batch": self._max_batch()}
            model = file_fingerprint(s.model)
        return {"model": model, "tokenizer": file_fingerprint(s.tokenizer), "inputs": self.inputs.condition_identity(),
                "height": s.height, "width": s.width, "num_sampling_steps": s.num_sampling_steps,
                "guidance_scale": s.guidance_scale, "seed": s.seed, "batch_size": s.batch_size,
                "quantization": s.quantization, **platform}

    def _max_batch(self) -> int:
        """Rows of the continuous batch: ``batch_size`` images, two rows each when guided (every family's default
        guidance is > 1)."""
        s = self.s
        guided = s.guidance_scale is None or s.guidance_scale > 1.0
        return s.batch_size * (2 if guided else 1)

    def _load_runtime(self):
        from ..runtime import Runtime

        s = self.s
        return Runtime.from_pretrained(s.model, device=rank_device(s.device, self.ctx), dtype=s.dtype,
                                       backend=s.backend, tokenizer_path=s.tokenizer, trust_pickle=s.trust_pickle,
                                       max_batch=self._max_batch(), quantization=s.quantization)

    def _plan(self, job: Job, layout) -> dict:
        """Rank 0: the layout's folders and files that need no image, the indices still to make, run.json."""
        if job.labels is not None and job.labels.notice:
            self.say(f"note: {job.labels.notice}")
        layout.prepare(self.tmp)
        finished = layout.finished()
        todo = [i for i in range(job.num_images) if i not in finished]
        self.record["resolved"] = job.resolved()
        self.record["runs"].append({"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                    "host": socket.gethostname(), "world_size": self.ctx.world,
                                    "to_make": len(todo), "finished": False})
        write_record(self.out, self.record)
        if finished:
            self.say(f"resuming: {len(finished)} of {job.num_images} images are already in {self.out}")
        return {"todo": todo, "already": len(finished)}

    def _job_count(self, own: int) -> int:
        """Images made in this run by every rank: this rank's live count, the others' from the board."""
        statuses = self.board.read()
        return own + sum(v.get("images", 0) for r, v in statuses.items() if r != self.ctx.rank)

    def _report_end(self, error: BaseException) -> None:
        """Put this rank's end on the board: ``stopped`` when another rank's failure (or an interrupt) stopped it,
        ``failed`` otherwise, and then give the others a moment to read it."""
        stopped = isinstance(error, (PeerFailed, KeyboardInterrupt))
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        try:
            self.board.publish("stopped" if stopped else "failed", error=message)
        except OSError:
            return
        if not stopped:
            self.board.wait_until_others_ended(FAILURE_GRACE_S)
