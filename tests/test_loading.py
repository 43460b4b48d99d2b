"""Checkpoint reading: shape inference from tensors, lazy one-tensor-at-a-time loading, detection of sizes."""

import torch
import pytest

from bitdance_rt.errors import CheckpointError
from bitdance_rt.loading.c2i_checkpoint import open_c2i_files
from bitdance_rt.loading.inspect import inspect_checkpoint
from bitdance_rt.loading.t2i_checkpoint import open_t2i_files
from bitdance_rt.loading.tensor_files import TensorTable, check_shapes, load_into
from bitdance_rt.tiny_models import write_tiny_c2i, write_tiny_t2i

CPU = torch.device("cpu")


def _table(tensors: dict[str, torch.Tensor], log: list[str]) -> TensorTable:
    def fetch(key):
        log.append(key)
        return tensors[key]
    return TensorTable({k: tuple(v.shape) for k, v in tensors.items()}, fetch, {k: "mem.safetensors" for k in tensors})


def test_load_into_assigns_each_fetched_tensor_without_copy():
    gen = torch.Generator().manual_seed(0)
    tensors = {"weight": torch.randn(5, 3, generator=gen), "bias": torch.randn(5, generator=gen)}
    log: list[str] = []
    lin = load_into(lambda: torch.nn.Linear(3, 5), _table(tensors, log), {"weight": (5, 3), "bias": (5,)}, "lin")
    assert sorted(log) == ["bias", "weight"]  # every key read exactly once
    assert lin.weight.data_ptr() == tensors["weight"].data_ptr()  # the module holds the read tensor itself
    assert lin.bias.data_ptr() == tensors["bias"].data_ptr()
    assert not lin.weight.requires_grad and not lin.training


def test_check_shapes_names_file_key_expected_and_found():
    table = _table({"a": torch.zeros(2, 3)}, [])
    with pytest.raises(CheckpointError, match=r"mem\.safetensors.*'a'.*\[2, 3\].*expected \[3, 2\]"):
        check_shapes(table, {"a": (3, 2)}, "part")
    with pytest.raises(CheckpointError, match=r"'b' is missing.*\[4\]"):
        check_shapes(table, {"a": (2, 3), "b": (4,)}, "part")
    with pytest.raises(CheckpointError, match=r"unexpected key.*'a'"):
        check_shapes(table, {}, "part")


def test_plan_reads_no_weights(tmp_path, monkeypatch):
    """Planning (sizes, shape checks, `info`) touches only headers: no tensor data is read."""
    import safetensors

    real_open = safetensors.safe_open

    class HeadersOnly:
        def __init__(self, *args, **kwargs):
            self._h = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def keys(self):
            return self._h.keys()

        def get_slice(self, key):
            return self._h.get_slice(key)

        def get_tensor(self, key):
            raise AssertionError(f"tensor {key} was read while planning")

    directory = write_tiny_t2i(tmp_path / "t2i", parallel_num=16)
    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    plan = open_t2i_files(directory, CPU, torch.float32)
    assert plan.parallel == 16 and plan.backbone_config.hidden_size == 64
    assert plan.head_config.block_kind == "trans" and plan.head_config.sigmoid_output
    assert plan.decoder_layout.downsample == 16
    assert inspect_checkpoint(directory)["tokens_per_step"] == 16
    with pytest.raises(CheckpointError, match="was read while planning"):
        plan.parts["projector"][0].fetch("fc1.weight")


@pytest.mark.parametrize("parallel, kind", [(16, "trans"), (4, "trans"), (1, "res")])
def test_c2i_sizes_are_inferred_from_shapes(tmp_path, parallel, kind):
    model, tokenizer = write_tiny_c2i(tmp_path, parallel_num=parallel)
    # a name that says nothing: detection must not depend on file names
    renamed = model.rename(tmp_path / "checkpoint.bin")
    plan = open_c2i_files(renamed, tokenizer, CPU, torch.float32)
    assert plan.config.parallel == parallel
    assert plan.config.dim == 64 and plan.config.num_layers == 2 and plan.config.num_heads == 1
    assert plan.head_config.block_kind == kind and not plan.head_config.sigmoid_output
    assert plan.head_config.attn_head_dim == 64 and plan.decoder_layout.z_channels == 32


def test_info_reports_parameter_counts_and_stored_dtypes(tmp_path):
    directory = write_tiny_t2i(tmp_path / "t2i", parallel_num=64)
    info = inspect_checkpoint(directory)
    assert info["family"] == "text-to-image" and info["tokens_per_step"] == 64
    assert info["stored_dtypes"]["backbone"] == {"BF16": sum(1 for k in open_t2i_files(directory, CPU, torch.float32)
                                                            .backbone_config.expected_shapes())}
    assert info["parameters"]["total"] == sum(v for k, v in info["parameters"].items() if k != "total")
    assert info["parameters"]["projector"] == 32 * 64 + 64 + 64 * 64 + 64
