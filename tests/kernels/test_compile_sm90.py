"""Every Triton kernel compiles for the H100 (sm_90) with Triton's real compiler and ptxas, on a CPU-only machine.

The interpreter that runs the other kernel tests does not see compile-only errors (a name assigned blocks of
different shapes in the two branches of a runtime ``if`` runs there and fails in the compiler). Here each variant
of ``compile_targets.VARIANTS`` (float32 and bf16 of every kernel at the released models' shapes: both RoPE
forms, decode with and without key splits and the split-merge kernel, prefill, head dims 64 and 128, the sampler
step and its final step with and without packing, the head's input projection, final layer and final layer with
the sampler step; the 8-bit GEMMs at the 14B decode and batch shapes with and without split-K, and the fp8
activation quantizer) is compiled in a child process without ``TRITON_INTERPRET``
(``conftest.py`` sets it for this folder; kernels decorated under it cannot be compiled). Checked per variant:
the launcher launched the expected kernels, each compiled to a non-empty sm_90a ELF cubin, and fits an H100
block (shared memory <= 227 KiB, registers <= 255 per thread and <= 64 Ki per block). Spills are reported, not
failed: the resource table (registers, spills, shared memory, MMA generation) is printed by
``test_resource_table``. A canary kernel that the interpreter runs but the compiler rejects checks that such an
error is reported. Skipped, with the reason, where this Triton build has no NVIDIA backend or ptxas.
About 3 minutes on 2 shared cores (one child process, one worker per core).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import compile_targets
import pytest
from compile_targets import (CANARY, MAX_REGISTERS_PER_THREAD, MAX_SHARED_BYTES, REGISTERS_PER_SM, VARIANTS,
                             WARP_SIZE)

CHILD_TIMEOUT_S = 600
# variant -> why it does not compile (xfail, strict: a fix makes the test fail until the entry is removed).
# Empty: every variant compiles with Triton 3.9.0 and its ptxas 13.4.
KNOWN_FAILURES: dict[str, str] = {}


def _variant_params() -> list:
    return [pytest.param(v.name, id=v.name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[v.name])]
                         if v.name in KNOWN_FAILURES else []) for v in VARIANTS]


def _selected_variants(session: pytest.Session) -> list[str]:
    """The variants whose tests this session runs (all of them when only the other tests run), and the canary."""
    names = [item.callspec.params["variant"] for item in session.items
             if getattr(item, "module", None) is not None and item.module.__name__ == __name__
             and hasattr(item, "callspec")]
    return (names or [v.name for v in VARIANTS]) + [CANARY.name]


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> dict:
    """The child's JSON report for the selected variants; skips every test when it says the toolchain is missing."""
    out = tmp_path_factory.mktemp("compile_sm90") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = str(compile_targets.REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join([repo, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else repo
    command = [sys.executable, compile_targets.__file__, "--json", str(out),
               "--only", *_selected_variants(request.session)]
    child = subprocess.run(command, env=env, cwd=repo, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if child.returncode != 0 or not out.exists():
        pytest.fail(f"compile_targets exited with {child.returncode}; stderr:\n{child.stderr[-4000:]}")
    data = json.loads(out.read_text())
    if "skip" in data:
        pytest.skip(f"cannot compile for sm_90 here: {data['skip']}")
    return data


def _result(report: dict, variant: str) -> dict:
    return next(r for r in report["results"] if r["variant"] == variant)


@pytest.mark.parametrize("variant", _variant_params())
def test_compiles_for_sm90(report: dict, variant: str) -> None:
    result = _result(report, variant)
    assert result["ok"], f"{variant}: kernel {result['failed_kernel'] or '(launcher)'} failed:\n{result['error']}"
    expected = compile_targets.VARIANTS_BY_NAME[variant].kernels
    assert tuple(k["kernel"] for k in result["kernels"]) == expected
    for k in result["kernels"]:
        where = f"{variant} {k['kernel']}"
        assert k["cubin_bytes"] > 0 and k["cubin_is_elf"], f"{where}: empty or non-ELF cubin"
        assert k["ptx_targets_sm90"], f"{where}: the PTX does not target sm_90a"
        assert k["shared_bytes"] <= MAX_SHARED_BYTES, \
            f"{where}: {k['shared_bytes']} bytes of shared memory, an H100 block has at most {MAX_SHARED_BYTES}"
        assert k["registers"] is not None, f"{where}: no register count in the ptxas log"
        threads = k["num_warps"] * WARP_SIZE
        assert k["registers"] <= MAX_REGISTERS_PER_THREAD and k["registers"] * threads <= REGISTERS_PER_SM, \
            f"{where}: {k['registers']} registers x {threads} threads do not fit an H100 block"


def test_every_kernel_has_a_compile_target(report: dict) -> None:
    """A kernel added to ``bitdance_rt.kernels`` (a @triton.jit function named ``*_kernel``) needs a variant."""
    covered = {name for v in VARIANTS for name in v.kernels}
    missing = sorted(set(report["kernels_in_package"]) - covered)
    assert not missing, f"kernels without a variant in compile_targets.VARIANTS: {missing}"


def test_harness_reports_a_compile_only_error(report: dict) -> None:
    """The canary kernel runs in the interpreter but not through the compiler: the report must say so, naming it."""
    result = _result(report, CANARY.name)
    assert not result["ok"], "the canary compiled: this harness would miss compile-only errors"
    assert result["failed_kernel"] == "_canary_kernel", result["error"]
    assert result["error"].startswith("CompilationError") and "values" in result["error"], result["error"]


def test_resource_table(report: dict, capsys: pytest.CaptureFixture) -> None:
    """Prints registers, spills and shared memory per compiled kernel (shown without ``-s``)."""
    results = [r for r in report["results"] if r["variant"] != CANARY.name]
    table = compile_targets.resource_table(results)
    with capsys.disabled():
        print(f"\nsm_90 compilation ({report['seconds']} s in the child):\n{table}")
    assert all(k["registers"] is not None for r in results for k in r["kernels"]), table
