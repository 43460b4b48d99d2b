"""Install with ``pip install -e .`` (add ``[serve]`` for ``bitdance-rt serve``, ``[diffusers]`` for
``bitdance_rt.BitDancePipeline``, ``[gradio]`` for ``bitdance-rt gradio``, ``[hub]`` for ``bitdance-rt download``,
``[train]`` for ``tools/train_digits.py``, ``[test]`` for the test suite). The core install stays lean: the runtime
imports without any extra.

The Triton kernels live in ``kernels/`` at the repository root and ship as ``bitdance_rt.kernels`` (a top-level
``kernels`` module would clash with an existing PyPI package of that name).

The CUDA kernels (``csrc/``) are compiled on first use on a CUDA machine (``bitdance_rt/cuda_ext.py``). To build them
ahead of time instead, as the extension module ``bitdance_rt.bitdance_rt_cuda``, set ``BITDANCE_RT_BUILD_CUDA=1``
and install without build isolation, so that the build sees your torch:
``BITDANCE_RT_BUILD_CUDA=1 pip install --no-build-isolation .``
"""

import os
from pathlib import Path

from setuptools import find_packages, setup


def cuda_extension():
    """The ahead-of-time build of csrc/ when BITDANCE_RT_BUILD_CUDA=1, else nothing."""
    if os.environ.get("BITDANCE_RT_BUILD_CUDA") != "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    csrc = Path("csrc")
    sources = sorted(str(p) for p in csrc.glob("*.cu")) + [str(csrc / "module.cpp")]
    flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-diag-suppress", "3306", "-lineinfo"]
    ext = CUDAExtension("bitdance_rt.bitdance_rt_cuda", sources, include_dirs=[str(csrc.resolve())],
                        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": flags})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extension()

# the HTTP server (bitdance_rt/http): uvicorn below 1.0 because bitdance_rt/http/protocol.py extends its h11 protocol
SERVE = ["fastapi>=0.110", "uvicorn>=0.30,<1.0", "prometheus_client>=0.20", "sse-starlette>=3.0", "pydantic>=2.6"]

setup(
    name="bitdance-rt",
    version="0.1.0",
    description="Inference runtime for BitDance binary-token autoregressive image generators",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bitdance_rt", "bitdance_rt.*"]) + ["bitdance_rt.kernels"],
    package_dir={"bitdance_rt": "bitdance_rt", "bitdance_rt.kernels": "kernels"},
    package_data={"bitdance_rt.http": ["web/*.html"],
                  "bitdance_rt": ["assets/digits/*.pt", "assets/digits/*.json"]},
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
        "serve": SERVE,
        "diffusers": ["diffusers>=0.30"],
        "gradio": ["gradio>=5.0"],
        "train": ["scikit-learn>=1.0"],
        # the HTTP tests need the server and the official OpenAI client; the front ends' tests diffusers and Gradio;
        # the digits quality gate scikit-learn
        "test": ["pytest>=7", "pytest-benchmark>=4", "transformers>=4.51", "openai>=2.0", *SERVE, "diffusers>=0.30",
                 "gradio>=5.0", "gradio_client>=1.0", "scikit-learn>=1.0"],
        "hub": ["huggingface_hub>=0.23"],
        "flash": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["bitdance-rt=bitdance_rt.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
