"""``bitdance-rt download NAME``: released weights from the Hugging Face Hub (needs the ``hub`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "download"
HELP = "download released weights from the Hugging Face Hub"

HUB_MODELS = {
    "BitDance-14B-64x": "shallowdream204/BitDance-14B-64x",
    "BitDance-14B-16x": "shallowdream204/BitDance-14B-16x",
    "BitDance-ImageNet": "shallowdream204/BitDance-ImageNet",
}


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("name", choices=sorted(HUB_MODELS))
    d.add_argument("--dir", default="models", help="parent folder (default: ./models)")


def run(a: argparse.Namespace) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print("bitdance-rt download needs huggingface_hub: pip install 'bitdance-rt[hub]'", file=sys.stderr)
        return 2
    target = Path(a.dir) / a.name
    snapshot_download(repo_id=HUB_MODELS[a.name], local_dir=str(target),
                      allow_patterns=["*.json", "*.safetensors", "*.pt", "*.txt", "*.md"])
    print(f"downloaded {HUB_MODELS[a.name]} to {target}")
    return 0
