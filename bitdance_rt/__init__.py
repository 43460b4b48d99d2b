"""bitdance-rt: an inference runtime for BitDance binary-token image generators.

``Runtime.from_pretrained(path)`` loads a released text-to-image directory or class-conditional checkpoint;
``Runtime.generate`` makes images; ``Runtime.submit(ImageRequest(...))`` / ``step()`` / ``start_worker()`` serve
requests with continuous batching. See README.md.

``bitdance_rt.BitDancePipeline`` (a ``diffusers.DiffusionPipeline``; needs the ``diffusers`` extra) is imported on
first access, so ``import bitdance_rt`` works without diffusers.
"""

from .errors import BitDanceError, CheckpointError, InvalidRequestError, UnsupportedDeviceError
from .outputs import GenerationOutput
from .runtime import Runtime
from .batching import RequestCancelled, RequestFailed, RequestHandle
from .request import ImageRequest

__all__ = ["Runtime", "GenerationOutput", "ImageRequest", "RequestHandle", "RequestCancelled", "RequestFailed",
           "BitDanceError", "CheckpointError", "InvalidRequestError", "UnsupportedDeviceError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "BitDancePipeline":
        from .frontends.diffusers_pipeline import BitDancePipeline

        return BitDancePipeline
    raise AttributeError(f"module 'bitdance_rt' has no attribute {name!r}")
