"""A sampling run resolved in two stages.

``read_inputs(settings)`` (before any model loads, on every rank): the prompts file read and checked, or the labels
file read; the output layout; the number of images. ``resolve_job(inputs, family)`` (with the model's family):
the class labels, the size, sampling steps and guidance the model's defaults fill in, every distinct condition
checked by ``request.resolve_request`` (the one validator), and the request of each image index.

Image index i uses noise seed ``seed + i`` whatever rank makes it. Text-to-image: image i is image ``k = i mod K``
of prompt ``p = i div K`` (K images per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequestError
from ..request import MAX_SEED, ImageRequest, resolve_request
from .errors import InputFileError
from .labels import LabelPlan, plan_labels, read_label_file
from .prompt_files import PromptEntry, infer_layout, prompts_digest, read_prompts
from .settings import DEFAULT_IMAGES_PER_PROMPT, DPG_MAX_IMAGES, SampleSettings, precheck

CLASS_LAYOUT = "npz"


@dataclass(frozen=True)
class JobInputs:
    settings: SampleSettings
    layout: str                          # "npz" (class-conditional), "geneval", "dpg" or "plain"
    prompts: list[PromptEntry] | None
    images_per_prompt: int               # 1 for class-conditional runs
    file_labels: list[int] | None        # --labels FILE, before the class-count check
    num_images: int

    def condition_identity(self) -> dict:
        """What the images are of, as run.json records it (a rerun must match)."""
        s = self.settings
        if self.prompts is not None:
            return {"prompts_sha256": prompts_digest(self.prompts), "prompt_count": len(self.prompts),
                    "layout": self.layout, "images_per_prompt": self.images_per_prompt,
                    "negative_prompt": s.negative_prompt}
        labels = {"labels": s.labels if self.file_labels is None else "file"}
        if self.file_labels is not None:
            labels["labels_sha256"] = LabelPlan("file", self.file_labels, None, None).digest
        return {**labels, "num_samples": self.num_images, "layout": self.layout, "png": s.png}


def read_inputs(settings: SampleSettings) -> JobInputs:
    precheck(settings)
    s = settings
    if s.text_to_image:
        layout = s.layout or infer_layout(Path(s.prompts))
        prompts = read_prompts(Path(s.prompts), layout)
        k = s.images_per_prompt or DEFAULT_IMAGES_PER_PROMPT[layout]
        if layout == "dpg" and k > DPG_MAX_IMAGES:
            raise InvalidRequestError(f"--images-per-prompt {k} with --layout dpg: DPG-Bench's evaluator reads at most "
                                      f"{DPG_MAX_IMAGES} images (a 2x2 grid) from each file; use 1..{DPG_MAX_IMAGES} "
                                      "(4 is the benchmark's protocol).", param="images_per_prompt")
        n = len(prompts) * k
        inputs = JobInputs(s, layout, prompts, k, None, n)
    else:
        file_labels = None
        if s.labels not in ("balanced", "random"):
            file_labels = read_label_file(Path(s.labels), None)
            if s.num_samples is not None and s.num_samples != len(file_labels):
                raise InputFileError(Path(s.labels), None, f"holds {len(file_labels)} class ids but --num-samples is "
                                                           f"{s.num_samples}; leave --num-samples out to make one "
                                                           "image per line, or fix the file.", param="num_samples")
        n = len(file_labels) if file_labels is not None else s.num_samples
        inputs = JobInputs(s, CLASS_LAYOUT, None, 1, file_labels, n)
    if s.seed + inputs.num_images - 1 > MAX_SEED:
        raise InvalidRequestError(f"--seed {s.seed} with {inputs.num_images} images passes the largest seed {MAX_SEED} "
                                  "(image i uses seed + i); use a smaller seed.", param="seed")
    return inputs


@dataclass(frozen=True)
class Job:
    inputs: JobInputs
    family: object
    labels: LabelPlan | None
    height: int
    width: int
    num_sampling_steps: int
    guidance_scale: float
    rows_per_image: int                  # cache rows an image takes in a batch: 2 when guided

    @property
    def settings(self) -> SampleSettings:
        return self.inputs.settings

    @property
    def num_images(self) -> int:
        return self.inputs.num_images

    @property
    def layout(self) -> str:
        return self.inputs.layout

    def prompt_of(self, index: int) -> tuple[int, int]:
        """``(prompt p, image k of that prompt)`` of a text-to-image run's image index."""
        return divmod(index, self.inputs.images_per_prompt)

    def request(self, index: int) -> ImageRequest:
        """The request that makes image ``index``: one image, seed ``seed + index``, pixels back."""
        s = self.settings
        condition = self._condition(index)
        return ImageRequest(**condition, height=self.height, width=self.width, num_images=1,
                            num_sampling_steps=self.num_sampling_steps, guidance_scale=self.guidance_scale,
                            seed=s.seed + index, output_type="np")

    def where(self, index: int) -> str:
        """Where image ``index``'s condition came from, for error messages."""
        if self.inputs.prompts is None:
            src = f" ({self.labels.source})" if self.labels.source else ""
            return f"image {index} (class {self.labels.labels[index]}{src})"
        p, k = self.prompt_of(index)
        e = self.inputs.prompts[p]
        line = f", line {e.line}" if e.line is not None else ""
        return f"image {index} (image {k} of prompt {e.key!r}, {e.source}{line})"

    def _condition(self, index: int) -> dict:
        if self.inputs.prompts is None:
            return {"class_label": self.labels.labels[index]}
        p, _ = self.prompt_of(index)
        return {"prompt": self.inputs.prompts[p].prompt, "negative_prompt": self.settings.negative_prompt}

    def resolved(self) -> dict:
        """The values the model's defaults filled in (recorded in run.json)."""
        return {"height": self.height, "width": self.width, "num_sampling_steps": self.num_sampling_steps,
                "guidance_scale": self.guidance_scale, "num_images": self.num_images,
                "labels_notice": self.labels.notice if self.labels else None}


def resolve_job(inputs: JobInputs, family) -> Job:
    """The run against the loaded model's family; raises ``InvalidRequestError`` naming the field (and the prompt
    file's line) before anything is sampled."""
    s = inputs.settings
    takes_prompts = family.condition_field == "prompt"
    if takes_prompts and inputs.prompts is None:
        raise InvalidRequestError(f"this {family.title} model takes prompts: pass --prompts FILE (GenEval "
                                  "metadata .jsonl, DPG-Bench prompts, or one prompt a line).", param="prompts")
    if not takes_prompts and inputs.prompts is not None:
        raise InvalidRequestError(f"this {family.title} model takes class labels, not prompts: pass --num-samples "
                                  "N [--labels balanced|random|FILE] instead of --prompts.", param="prompts")
    labels = None
    if not takes_prompts:
        labels = plan_labels(s.labels, s.num_samples if inputs.file_labels is None else None, family.num_classes,
                             s.seed)
    first = ImageRequest(class_label=labels.labels[0] if labels else None,
                         prompt=inputs.prompts[0].prompt if inputs.prompts else None,
                         negative_prompt=s.negative_prompt, height=s.height, width=s.width,
                         num_sampling_steps=s.num_sampling_steps, guidance_scale=s.guidance_scale, seed=s.seed)
    spec = resolve_request(first, family)
    job = Job(inputs, family, labels, spec.height, spec.width, spec.num_steps, spec.guidance, spec.rows)
    if inputs.prompts is not None:
        for p, entry in enumerate(inputs.prompts):
            _check(job, p * inputs.images_per_prompt, family)
    else:
        seen = {}
        for i, label in enumerate(labels.labels):
            seen.setdefault(label, i)
        for i in seen.values():
            _check(job, i, family)
    return job


def _check(job: Job, index: int, family) -> None:
    try:
        resolve_request(job.request(index), family)
    except InvalidRequestError as e:
        raise InvalidRequestError(f"{job.where(index)}: {e}", param=e.param) from None
