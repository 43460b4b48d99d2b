"""bitdance-rt: an inference runtime for BitDance binary-token image generators.

``Runtime.from_pretrained(path)`` loads a released text-to-image directory or class-conditional checkpoint;
``Runtime.generate`` makes images. See README.md.
"""

from .errors import BitDanceError, CheckpointError, InvalidRequestError, UnsupportedDeviceError
from .outputs import GenerationOutput
from .runtime import Runtime

__all__ = ["Runtime", "GenerationOutput", "BitDanceError", "CheckpointError", "InvalidRequestError",
           "UnsupportedDeviceError"]
__version__ = "0.1.0"
