"""``Engine``: the optimized path over one model's weights, for both families: the backbone on the kernels (one
layer loop, ``backbone.py``, driven by the family's layer facts), the head's fused sampling loop (``head_loop.py``),
the prefill of joining rows, the decode step over the static cache, and the AR step of a continuous batch of image
slots (``SlotBatch``), eager or captured into CUDA graphs (``ar_step.py``).

What differs by family comes from the family object: the prefill's input embeddings and lengths, the position
term of every AR step, the embedding of fed-back tokens, the layer facts. The model runner (``runner.py``) owns the
batches and drives the engine.

A batch's AR step computes every row of the slots it covers (free slots too: their rows are computed and ignored),
so with a fixed prefix size a row's result depends only on its own inputs, never on what shares the batch.
"""

from __future__ import annotations

import torch

from ..ops import OpSet
from .ar_step import AutoregressiveStep, build_leading_steps, build_step
from .backbone import run_layers
from .cuda_graphs import graphs_available
from .head_loop import FusedHead
from .slot_batch import SlotBatch
from .static_cache import StaticKVCache

# the operations an AR step (backbone decode and head loop) calls, all captured into its CUDA graphs
STEP_OPS = ("block_attention_decode", "qk_norm_rope_append", "rope_append_interleaved", "rmsnorm_residual", "swiglu",
            "layernorm_modulate", "gated_residual", "patch_attention", "sampler_step_keyed", "keyed_noise",
            "sampler_final", "time_condition", "sigmoid_output", "input_projection", "final_layer",
            "final_layer_step")


class Engine:
    def __init__(self, family, ops: OpSet):
        self.family, self.ops = family, ops
        self.layout = layout = family.backbone_layout()
        self.head = FusedHead(family.model.head, ops)
        # graphs need every operation of a step capturable (not so the PyTorch attention: it reads lengths on the host)
        self.use_cuda_graphs = ops.capturable(STEP_OPS)
        self.head_dim, self.width, self.num_heads, self.ffn_width = (layout.head_dim, layout.width, layout.heads,
                                                                     layout.ffn_width)
        self.parallel, self.token_channels = family.parallel, family.token_channels
        self.cache_shape = (len(layout.layers), layout.kv_heads, layout.head_dim)  # layers, KV heads, head dim
        self._token_decoder = None

    @property
    def fused_decoder(self) -> bool:
        """Whether images are decoded by the ``EngineTokenDecoder`` (the decoder's GroupNorms are kernels here)."""
        return self.ops.chosen.get("group_norm_silu") != "torch"

    @property
    def token_decoder(self):
        """The decoder the engine decodes with: an ``EngineTokenDecoder`` over the model's decoder weights when the
        decoder's operations are kernels (Triton or CUDA providers; made on first use), None with the PyTorch
        operations, where the reference ``TokenDecoder`` decodes (``Family.decode``'s default): the oracle itself."""
        if self._token_decoder is None and self.fused_decoder:
            from .token_decoder import EngineTokenDecoder

            self._token_decoder = EngineTokenDecoder(self.family.model.decoder, self.ops)
        return self._token_decoder

    @property
    def device(self) -> torch.device:
        return self.layout.final_norm.device

    @property
    def hidden_dtype(self) -> torch.dtype:
        return self.layout.dtype

    @property
    def token_dtype(self) -> torch.dtype:
        """dtype of the head's sampled tokens (the head's weights)."""
        return self.head.head.input_proj.weight.dtype

    # ------------------------------------------------------------------ backbone
    def prefill(self, rows: list, cache: StaticKVCache, pad_rows: int | None = None,
                pad_len: int | None = None) -> torch.Tensor:
        """Run every row's prefix (``family.cache_rows``: prompt token ids, or class ids) with the block mask in one
        pass (``pad_rows`` x ``pad_len``: the pass's fixed shape, filler rows appended); returns the hidden states
        of each row's first block ``[B, P, W]`` and leaves ``cache.lengths`` at each row's prefix length."""
        p, scale = self.parallel, self.head_dim ** -0.5
        x, lengths, causal = self.family.prefill_inputs(rows, self.device, pad_rows, pad_len)
        cache.lengths.zero_()

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.block_attention_prefill(q, cache.keys[i], cache.values[i], lengths, causal, p, scale)

        hidden = run_layers(self.ops, self.layout, x, cache, attend)
        cache.lengths.copy_(lengths)
        last = (lengths.long() - p)[:, None] + torch.arange(p, device=lengths.device)
        return hidden.gather(1, last[:, :, None].expand(-1, -1, hidden.shape[2]))

    def block_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position term of every AR step, ``[h·w / P, P, W]`` float32."""
        return self.family.block_positions(grid, self.device)

    def embed_feedback(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The next block's input embeddings from sampled tokens and each row's position term."""
        return self.family.embed_feedback(tokens, pos)

    def decode(self, embeds: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One block of P embeddings per row ``[B, P, width]`` -> hidden states ``[B, P, width]``; the block attends
        to each row's cache and to itself; advances the cache lengths on the device."""
        scale = self.head_dim ** -0.5

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.block_attention_decode(q, cache.keys[i], cache.values[i], cache.lengths, scale)

        hidden = run_layers(self.ops, self.layout, embeds, cache, attend)
        cache.lengths += embeds.shape[1]
        return hidden

    # ------------------------------------------------------------------ continuous batches
    def allocate_batch(self, slots: int, max_len: int, num_steps: int, guided: bool) -> SlotBatch:
        """A new batch of ``slots`` image slots with a cache of ``max_len`` positions per row (the runner keeps it;
        its CUDA graphs, built by ``ar_step``, stay valid for later requests while it is kept)."""
        layers, kv_heads, head_dim = self.cache_shape
        rows = slots * (2 if guided else 1)
        cache = StaticKVCache(layers, rows, kv_heads, max_len, head_dim, self.device, self.hidden_dtype)
        return SlotBatch.allocate(cache, slots, guided, self.parallel, self.width, self.token_channels, num_steps,
                                  self.hidden_dtype, self.token_dtype)

    def ar_step(self, batch: SlotBatch, slots: int) -> AutoregressiveStep:
        """The AR step over the first ``slots`` slots of ``batch``: built once per prefix size and kept by the
        batch; on CUDA captured into graphs (the caller fills pos, cfg and noise before each ``head()``)."""
        if slots not in batch.steps:
            view = batch.prefix(slots)
            graphed = self.use_cuda_graphs and graphs_available(view.hidden.device)
            times = self.head.step_times(view.num_steps)
            p, w, c, m = view.parallel, self.width, self.token_channels, view.mult

            def head() -> torch.Tensor:
                cond = view.hidden + view.pos
                if view.guided:  # cache rows (cond, uncond) per slot -> the sampler's halves [cond..., uncond...]
                    cond = cond.view(slots, 2, p, w).transpose(0, 1).reshape(2 * slots, p, w)
                keys = (view.seeds, view.ar_steps, view.rows_in_request)
                tokens = self.head.sample_keyed(cond, keys, view.guidance_scales, view.guided, times)
                if view.guided:
                    view.feedback.view(slots, 2, p, c).copy_(tokens.view(2, slots, p, c).transpose(0, 1))
                else:
                    view.feedback.copy_(tokens)
                return view.feedback.view(slots, m, p, c)[:, 0]

            def decode() -> torch.Tensor:
                view.hidden.copy_(self.decode(self.embed_feedback(view.feedback, view.pos), view.cache))
                return view.cache.lengths.mul_(view.live)

            batch.steps[slots] = build_step(head, decode, [view.hidden, view.cache.lengths], graphed)
        return batch.steps[slots]

    def join(self, batch: SlotBatch, row_index: torch.Tensor, rows: list, shape: tuple[int, int],
             leading: list[torch.Tensor] = (), keys: tuple[torch.Tensor, torch.Tensor] | None = None,
             decode_last: bool = True) -> list[torch.Tensor]:
        """Joining requests' prefill and their leading unguided AR steps in one fixed-shape pass, whatever their
        number and wherever their slots are.

        ``rows`` (``family.cache_rows`` of every joining request, cache-row order) are prefilled as a
        ``shape = (R, T)`` batch (filler rows appended, rows padded to T) into a scratch cache of the batch's own
        (kept with its static buffers in ``batch.steps``), so the arithmetic of a row never depends on what joins
        with it. ``leading``: the position term ``[P, W]`` of each leading unguided AR step (the class-conditional
        release's step 0; the same for every join of a batch); each samples every scratch row on its own
        (guidance 1) with the keyed noise of ``keys = (seeds int64 [R], rows_in_request int32 [R])`` and, unless it
        is the last with ``decode_last`` False, feeds the tokens back; these steps are captured into a CUDA graph
        on a GPU like the batch's AR step (``ar_step.build_leading_steps``). Then the scratch rows' keys/values,
        lengths and hidden states are copied into the batch rows ``row_index`` (int64 ``[len(rows)]``, on the
        device) in one copy per tensor, and those rows go live. Returns the leading steps' tokens, ``[R, P, C]``
        each, cache-row order (rows past ``len(rows)``: filler)."""
        n, (total, length) = len(rows), shape
        state = self._join_state(batch, shape, leading, decode_last)
        scratch = state["scratch"]
        state["hidden"].copy_(self.prefill(rows, scratch, total, length))
        if leading:
            state["seeds"].copy_(keys[0])
            state["rows_in_request"].copy_(keys[1])
            state["run"]()
        span = scratch.max_len
        for dst, src in zip(batch.cache.keys + batch.cache.values, scratch.keys + scratch.values):
            dst[:, :, :span].index_copy_(0, row_index, src[:n])
        batch.cache.lengths.index_copy_(0, row_index, scratch.lengths[:n])
        batch.hidden.index_copy_(0, row_index, state["hidden"][:n].to(batch.hidden.dtype))
        batch.live.index_fill_(0, row_index, 1)
        return list(state["tokens"].unbind(0)) if leading else []

    def _join_state(self, batch: SlotBatch, shape: tuple[int, int], leading: list[torch.Tensor],
                    decode_last: bool) -> dict:
        """The static tensors of a batch's joins (scratch cache, hidden states, noise keys, tokens of the leading
        steps) and the leading steps over them, eager or graphed; with leading steps made once per batch and kept
        in ``batch.steps`` (the class-conditional prefix is short), without them (text-to-image: a long prompt
        cache, no graph) made per join."""
        key = ("join", shape, len(leading), decode_last)
        if key in batch.steps:
            return batch.steps[key]
        (total, length), k = shape, len(leading)
        layers, kv_heads, head_dim = self.cache_shape
        p, device = self.parallel, self.device
        state = {"scratch": StaticKVCache(layers, total, kv_heads, length + k * p, head_dim, device,
                                          self.hidden_dtype),
                 "hidden": torch.zeros(total, p, self.width, device=device, dtype=self.hidden_dtype),
                 "seeds": torch.zeros(total, dtype=torch.int64, device=device),
                 "rows_in_request": torch.zeros(total, dtype=torch.int32, device=device),
                 "tokens": torch.zeros(k, total, p, self.token_channels, device=device, dtype=self.token_dtype)}
        if k:
            positions = torch.stack(list(leading))
            times = self.head.step_times(batch.num_steps)
            ar_steps = [torch.full((total,), s, dtype=torch.int32, device=device) for s in range(k)]

            def run() -> torch.Tensor:
                hidden = state["hidden"]
                for s in range(k):
                    sampled = self.head.sample_keyed(hidden + positions[s], (state["seeds"], ar_steps[s],
                                                                             state["rows_in_request"]),
                                                     1.0, False, times)
                    state["tokens"][s].copy_(sampled)
                    if s + 1 < k or decode_last:
                        hidden = self.decode(self.embed_feedback(sampled, positions[s]), state["scratch"])
                state["hidden"].copy_(hidden)
                return state["tokens"]
            graphed = self.use_cuda_graphs and graphs_available(device)
            state["run"] = build_leading_steps(run, [state["scratch"].lengths, state["hidden"]], graphed)
            batch.steps[key] = state  # kept (graphs on a GPU) only with leading steps: a small cache of R·(T + k·P)
        return state
