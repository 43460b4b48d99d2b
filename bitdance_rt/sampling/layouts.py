"""Output folders, one class per layout: where each finished image is kept (the record a rerun resumes from), what
rank 0 writes once every image exists, and which images a folder already holds.

- ``npz`` (class-conditional): ``images/{i:06d}.png`` while the run goes, then ``samples.npz`` (``arr_0``: uint8
  ``[N, H, W, 3]`` in index order, the ADM evaluation suite's input) and ``labels.txt`` (class of image i on line
  i + 1); ``images/`` is removed at the end unless ``png`` was asked.
- ``geneval``: ``{p:05d}/metadata.jsonl`` (the prompt's line of the metadata file) and
  ``{p:05d}/samples/{k:04d}.png``, what GenEval's ``evaluate_images.py`` reads.
- ``dpg``: ``{item_id}.png``, the prompt's images in a grid of two columns (2x2 for 4 images), what DPG-Bench's
  ``compute_dpg_bench.py`` crops (``--pic-num`` = images per prompt, ``--resolution`` = the image side); the single
  images wait in ``parts/`` until their grid is written.
- ``plain``: ``images/{i:06d}.png`` and ``index.jsonl`` (one line per image: file, prompt, its line, seed).

Every file is written atomically (``atomic_files``), so a file that exists is whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .atomic_files import read_png, write_png, write_text
from .errors import SamplingError
from .npz_writer import write_samples_npz


def _listing(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder)}
    except FileNotFoundError:
        return set()


class OutputLayout:
    name = ""

    def __init__(self, out: Path, job):
        self.out, self.job = Path(out), job

    def image_path(self, index: int) -> Path:
        """Where image ``index`` is written the moment it is made."""
        raise NotImplementedError

    def finished(self) -> set[int]:
        """Image indices this folder already holds (as images, or inside a final file)."""
        raise NotImplementedError

    def prepare(self, tmp_dir: Path) -> None:
        """Rank 0, before sampling: folders, and the files that need no image."""
        self.image_path(0).parent.mkdir(parents=True, exist_ok=True)

    def finalize(self, tmp_dir: Path) -> list[str]:
        """Rank 0, once every image exists: the evaluator's files; returns what it wrote, in words."""
        raise NotImplementedError

    def save(self, index: int, pixels: np.ndarray, tmp_dir: Path) -> None:
        write_png(self.image_path(index), pixels, tmp_dir)

    def _missing(self, have: set[int]) -> None:
        missing = [i for i in range(self.job.num_images) if i not in have]
        if missing:
            raise SamplingError(f"{self.out}: {len(missing)} image(s) are missing after sampling (first: "
                                f"{self.job.where(missing[0])}, {self.image_path(missing[0])}); rerun the same "
                                "command to make them.")


class ClassSamplesLayout(OutputLayout):
    name = "npz"

    @property
    def npz(self) -> Path:
        return self.out / "samples.npz"

    def image_path(self, index: int) -> Path:
        return self.out / "images" / f"{index:06d}.png"

    def finished(self) -> set[int]:
        if self.npz.exists():
            return set(range(self.job.num_images))
        names = _listing(self.out / "images")
        return {i for i in range(self.job.num_images) if f"{i:06d}.png" in names}

    def prepare(self, tmp_dir: Path) -> None:
        super().prepare(tmp_dir)
        write_text(self.out / "labels.txt", "".join(f"{c}\n" for c in self.job.labels.labels), tmp_dir)

    def finalize(self, tmp_dir: Path) -> list[str]:
        if not self.npz.exists():
            self._missing(self.finished())
            write_samples_npz(self.npz, self.job.num_images, lambda i: read_png(self.image_path(i)), tmp_dir)
        if not self.job.settings.png:
            shutil.rmtree(self.out / "images", ignore_errors=True)
        h, w = self.job.height, self.job.width
        wrote = [f"{self.npz} (arr_0: uint8 [{self.job.num_images}, {h}, {w}, 3], image i at index i)",
                 f"{self.out / 'labels.txt'} (class of image i on line i + 1)"]
        if self.job.settings.png:
            wrote.append(f"{self.out / 'images'}/{{i:06d}}.png")
        return wrote


class GenevalLayout(OutputLayout):
    name = "geneval"

    def folder(self, p: int) -> Path:
        return self.out / f"{p:05d}"

    def image_path(self, index: int) -> Path:
        p, k = self.job.prompt_of(index)
        return self.folder(p) / "samples" / f"{k:04d}.png"

    def finished(self) -> set[int]:
        k_count = self.job.inputs.images_per_prompt
        done = set()
        for p in range(len(self.job.inputs.prompts)):
            names = _listing(self.folder(p) / "samples")
            done.update(p * k_count + k for k in range(k_count) if f"{k:04d}.png" in names)
        return done

    def prepare(self, tmp_dir: Path) -> None:
        for p, entry in enumerate(self.job.inputs.prompts):
            (self.folder(p) / "samples").mkdir(parents=True, exist_ok=True)
            write_text(self.folder(p) / "metadata.jsonl", entry.metadata + "\n", tmp_dir)

    def finalize(self, tmp_dir: Path) -> list[str]:
        self._missing(self.finished())
        n = len(self.job.inputs.prompts)
        return [f"{self.out}/{{00000..{n - 1:05d}}}/ ({n} prompt folders: metadata.jsonl, samples/{{k:04d}}.png; "
                "GenEval's evaluate_images.py reads the folder)"]


class DpgLayout(OutputLayout):
    name = "dpg"

    def grid_path(self, p: int) -> Path:
        return self.out / f"{self.job.inputs.prompts[p].key}.png"

    def image_path(self, index: int) -> Path:
        p, k = self.job.prompt_of(index)
        return self.out / "parts" / f"{self.job.inputs.prompts[p].key}.{k}.png"

    def finished(self) -> set[int]:
        grids, parts = _listing(self.out), _listing(self.out / "parts")
        k_count = self.job.inputs.images_per_prompt
        done = set()
        for p in range(len(self.job.inputs.prompts)):
            for k in range(k_count):
                i = p * k_count + k
                if self.grid_path(p).name in grids or self.image_path(i).name in parts:
                    done.add(i)
        return done

    def finalize(self, tmp_dir: Path) -> list[str]:
        self._missing(self.finished())
        k_count = self.job.inputs.images_per_prompt
        grids = _listing(self.out)
        for p in range(len(self.job.inputs.prompts)):
            if self.grid_path(p).name not in grids:
                images = [read_png(self.image_path(p * k_count + k)) for k in range(k_count)]
                write_png(self.grid_path(p), grid_of(images), tmp_dir)
        shutil.rmtree(self.out / "parts", ignore_errors=True)
        n = len(self.job.inputs.prompts)
        return [f"{self.out}/{{item_id}}.png ({n} grids of {k_count} images; DPG-Bench's compute_dpg_bench.py "
                f"reads the folder with --resolution {self.job.height} --pic-num {k_count})"]


def grid_of(images: list[np.ndarray]) -> np.ndarray:
    """Images of one size in rows of two, row-major (DPG-Bench's crop order: top left, top right, bottom left,
    bottom right); a missing last cell is black. One image is returned as it is."""
    h, w, c = images[0].shape
    cols = 1 if len(images) == 1 else 2
    rows = -(-len(images) // cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for n, image in enumerate(images):
        r, q = divmod(n, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    return grid


class PlainLayout(OutputLayout):
    name = "plain"

    def image_path(self, index: int) -> Path:
        return self.out / "images" / f"{index:06d}.png"

    def finished(self) -> set[int]:
        names = _listing(self.out / "images")
        return {i for i in range(self.job.num_images) if f"{i:06d}.png" in names}

    def finalize(self, tmp_dir: Path) -> list[str]:
        self._missing(self.finished())
        lines = []
        for i in range(self.job.num_images):
            p, k = self.job.prompt_of(i)
            e = self.job.inputs.prompts[p]
            lines.append(json.dumps({"index": i, "file": self.image_path(i).relative_to(self.out).as_posix(),
                                     "prompt_index": p, "image": k, "prompt": e.prompt, "line": e.line,
                                     "seed": self.job.settings.seed + i}, ensure_ascii=False))
        index = self.out / "index.jsonl"
        write_text(index, "\n".join(lines) + "\n", tmp_dir)
        return [f"{self.out / 'images'}/{{i:06d}}.png ({self.job.num_images} images)",
                f"{index} (one line per image: file, prompt, its line, seed)"]


LAYOUTS = {cls.name: cls for cls in (ClassSamplesLayout, GenevalLayout, DpgLayout, PlainLayout)}


def layout_for(out: Path, job) -> OutputLayout:
    return LAYOUTS[job.layout](out, job)
