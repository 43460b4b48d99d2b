"""8-bit weights (issue 12): formats, quantizers, the plain-PyTorch oracle, quantized modules, and the fast-path
entry points over the Triton kernels and ``torch._scaled_mm``. ``NOTES-quant.md`` states the integration contract.

| module | what |
|---|---|
| ``formats`` | ``QUANTIZATIONS``, numeric constants, ``check_quantization(value, device)`` |
| ``quantized_weight`` | ``QuantizedWeight``, ``quantize_fp8``, ``quantize_int8``, ``quantize_weight``, ``dequantize``, ``concat_quantized`` |
| ``reference_linear`` | the oracle: ``fp8_activation_quant_reference``, ``fp8_gemm_reference``, ``int8_weight_gemm_reference``, ``quantized_linear_reference`` |
| ``modules`` | ``QuantizedLinear``, ``quantizable_linears``, ``quantize_linears``, ``fuse_quantized_linears``, ``weights_bytes`` |
| ``fast_linear`` | ``quantized_linear``: one layer on the kernels (imports Triton when called) |
| ``scaled_mm`` | ``fp8_gemm_scaled_mm``: the fp8 GEMM through ``torch._scaled_mm`` (row-wise scales) |

Importing this package imports torch only (no Triton).
"""

from .formats import ACT_QUANTS, QUANTIZATIONS, check_quantization
from .modules import QuantizedLinear, fuse_quantized_linears, quantizable_linears, quantize_linears, weights_bytes
from .quantized_weight import (QuantizedWeight, concat_quantized, dequantize, quantize_fp8, quantize_int8,
                               quantize_weight)
from .reference_linear import quantized_linear_reference

__all__ = ["ACT_QUANTS", "QUANTIZATIONS", "check_quantization", "QuantizedLinear", "fuse_quantized_linears",
           "quantizable_linears",
           "quantize_linears", "weights_bytes", "QuantizedWeight", "concat_quantized", "dequantize", "quantize_fp8",
           "quantize_int8", "quantize_weight", "quantized_linear_reference"]
