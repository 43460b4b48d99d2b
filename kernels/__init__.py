"""Hand-written Triton kernels of bitdance-rt, importable as ``bitdance_rt.kernels``.

Each module holds the kernel(s), a launcher that checks its arguments, and ``REFERENCE``: the PyTorch function
in ``bitdance_rt.reference`` it must equal (tests/kernels compare them on random inputs; bench/ times them).

| module | computes | reference |
|---|---|---|
| ``block_attention`` | block-causal attention over a static KV cache: decode (P queries of a new block vs the cache plus the block, per-row device lengths, GQA packed into M, optional key splits) and prefill (causal prefix, then blocks of P, ragged rows) | ``reference.attention.masked_attention`` |
| ``pre_attention`` | q/k per-head RMSNorm + rotate-half RoPE (T2I) or interleaved 2-D RoPE (class-conditional), K/V written into the cache at each row's length, q returned in attention layout | ``reference.pre_attention`` |
| ``rmsnorm_residual`` | residual add + RMSNorm (HF or torch rounding) in one pass | ``reference.pre_attention.rmsnorm_residual_reference`` |
| ``layernorm_modulate`` | LayerNorm + adaLN ``x·(1+scale)+shift`` | ``reference.head_ops.layernorm_modulate_ref`` |
| ``gated_residual`` | ``x + h·gate`` | ``reference.head_ops.gated_residual_ref`` |
| ``swiglu`` | ``silu(a)·b`` | ``reference.head_ops.swiglu_ref`` |
| ``patch_attention`` | the head's self-attention over the P ≤ 64 tokens of a patch, one program per (row, head) | ``reference.head_ops.patch_attention_ref`` |
| ``input_projection`` | the head's ``input_proj`` of the float32 sample (cast to the weight's dtype) with its rows stored once per guidance half | ``reference.head_ops.input_projection_ref`` |
| ``final_layer`` | the head's final layer (affine-free LayerNorm, modulation, linear D -> C, optional ``2·sigmoid − 1``), D reduced in chunks; ``final_layer_step`` fuses it with the sampler step | ``reference.head_ops.final_layer_ref``, ``final_layer_step_ref`` |
| ``sampler_step`` | one Euler–Maruyama step from the head's output (velocity, guidance, score, drift, noise); the last Euler step with sign and bit packing | ``reference.sampler.step_from_prediction`` |
| ``group_norm_silu`` | the token decoder's GroupNorm + swish (``group_norm_silu``) and token-styled GroupNorm (``token_styled_group_norm``: per-(image, channel) scale and shift), NCHW or channels-last, in place allowed | ``reference.decoder_ops`` |
| ``token_packing`` | sign quantization, ±1 ↔ packed 32-bit words | ``reference.token_packing`` |
| ``int8_weight_gemm`` | ``x @ (Wq·scales)ᵀ + bias``: int8 weights per output channel, dequantized in registers, bf16/fp32 activations, optional split-K | ``quantization.reference_linear.int8_weight_gemm_reference`` |
| ``fp8_gemm`` | W8A8 e4m3 GEMM: per-token or 1×128-group activation scales × per-channel or 128×128-block weight scales, float32 accumulation, optional split-K | ``quantization.reference_linear.fp8_gemm_reference`` |
| ``float_gemm`` | ``x @ Wᵀ`` for bf16/fp16/fp32 weights with the shared epilogues (bias, SwiGLU, gated residual) and optional split-K | ``F.linear`` (+ ``head_ops.swiglu_ref`` / ``gated_residual_ref``) |
| ``fp8_activation_quant`` | activations to e4m3 codes with a scale per token or per 1×128 group | ``quantization.reference_linear.fp8_activation_quant_reference`` |

Helpers: ``_tiles`` (row tiles); for the three GEMMs ``_gemm_tiles`` (tiles and split-K), ``_gemm_launch`` (the
launchers' shared checks, buffers and split-K plumbing), ``_gemm_epilogue`` (bias, SwiGLU, gated residual: one
``@triton.jit`` function) and ``_split_k`` (the deterministic split-K sum that runs the epilogue). The int8 and fp8
GEMMs take the same ``epilogue=`` / ``gate=`` arguments.

Importing this package imports nothing; import the module you need (it imports Triton).
"""
