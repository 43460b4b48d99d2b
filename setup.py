"""Install with ``pip install -e .`` (add ``[test]`` for the test suite, ``[hub]`` for ``bitdance-rt download``).

The Triton kernels live in ``kernels/`` at the repository root and ship as ``bitdance_rt.kernels`` (a top-level
``kernels`` module would clash with an existing PyPI package of that name).
"""

from setuptools import setup

setup(
    name="bitdance-rt",
    version="0.1.0",
    description="Inference runtime for BitDance binary-token autoregressive image generators",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["bitdance_rt", "bitdance_rt.reference", "bitdance_rt.loading", "bitdance_rt.pipelines",
              "bitdance_rt.kernels"],
    package_dir={"bitdance_rt": "bitdance_rt", "bitdance_rt.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "numpy>=1.24",
        "pillow>=9.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "transformers>=4.51"],
        "hub": ["huggingface_hub>=0.23"],
        "flash": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["bitdance-rt=bitdance_rt.cli:main"]},
)
