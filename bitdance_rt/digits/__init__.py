"""A small class-conditional BitDance trained on scikit-learn's 8x8 digits, shipped with the package.

``assets.py`` finds and loads its files, ``pixels.py`` converts between 8x8 digits and model images,
``classifier.py`` is the quality gate's digit classifier, ``grid.py`` lays generated digits out as one image.
Training: ``tools/train_digits.py``. Quality gate: ``bitdance_rt.quality.digits_gate``.
"""

from .assets import ASSET_DIR, digits_files, load_record, load_runtime

__all__ = ["ASSET_DIR", "digits_files", "load_record", "load_runtime"]
