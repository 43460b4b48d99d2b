"""Bulk sampling for evaluations (``bitdance-rt sample``): tens of thousands of images across any number of GPUs
(``torchrun``), written in the layout each evaluator reads, resumable after a crash.

- Class-conditional: ``num_samples`` images with class-balanced (or random, or listed) labels -> ``samples.npz``
  (``arr_0`` uint8 ``[N, H, W, 3]``, the ADM evaluation suite's input) and optionally one PNG per image.
- Text-to-image: the prompts of a GenEval metadata file, DPG-Bench's prompts, or a text file of one prompt a line
  -> GenEval's folders, DPG-Bench's grids, or PNGs with an index.

Image i uses noise seed ``seed + i`` on whichever rank makes it (the runtime's keyed noise makes an image independent
of its batch), so 1 process and N processes write identical files, and a rerun of an interrupted run fills in
exactly the missing images. ``NOTES-sampling.md`` at the repository root shows the commands.

``sample(SampleSettings(...), runtime=None)`` is the Python API; ``bitdance_rt/cli/sample.py`` the command.
"""

from .errors import InputFileError, PeerFailed, SamplingError
from .progress import SampleSummary
from .runner import sample
from .settings import SampleSettings

__all__ = ["sample", "SampleSettings", "SampleSummary", "SamplingError", "PeerFailed", "InputFileError"]
