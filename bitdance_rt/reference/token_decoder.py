"""The binary-token decoder: a convolutional network that turns a token map into pixels.

Input ``z``: ``[B, C, h, w]`` token map (entries ±1, possibly 0), ``C = z_channels``. Output:
``[B, out_channels, h * ds, w * ds]`` roughly in ``[-1, 1]``, ``ds = 2 ** (L - 1)`` for ``L`` levels.

Computation (float32 on CPU reproduces the release):
``conv_in`` (3x3, bias; a GAN decoder first appends a standard-normal noise map of z's shape to z) ->
``num_res_blocks`` residual blocks at the deepest width -> for each level from the deepest (L-1) up to 0:
token-styled GroupNorm, ``num_res_blocks`` residual blocks to that level's width, and (levels > 0) a 3x3 conv to
4x channels followed by depth-to-space x2 in DCR order -> GroupNorm -> swish -> ``conv_out`` (3x3, bias).

Token-styled GroupNorm: affine-free GroupNorm(32, eps 1e-6) of the features, multiplied by
``gamma(sqrt(var_z + 1e-6))`` and shifted by ``beta(mean_z)``, where ``mean_z`` and ``var_z`` are per-channel
statistics of the token map over its h*w positions, ``var_z`` Bessel-corrected (divides by h*w - 1).

Parameter names equal the release's ``decoder.*`` keys without the ``decoder.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitdance_rt.errors import CheckpointError, InvalidRequestError

NORM_GROUPS = 32
NORM_EPS = 1e-6
STYLE_EPS = 1e-6


@dataclass(frozen=True)
class DecoderLayout:
    z_channels: int
    level_channels: tuple[int, ...]
    num_res_blocks: int
    out_channels: int
    gan_decoder: bool

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.level_channels) - 1)

    @property
    def conv_in_channels(self) -> int:
        return 2 * self.z_channels if self.gan_decoder else self.z_channels

    def style_channels(self, level: int) -> int:
        """Width of the features entering ``level``: the next deeper level's width, or its own at the deepest."""
        deeper = min(level + 1, len(self.level_channels) - 1)
        return self.level_channels[deeper]


def _layout_problem(layout: DecoderLayout) -> str | None:
    """Describe why ``layout`` cannot be built, or return None when it can."""
    if layout.z_channels < 1:
        return f"z_channels must be >= 1, found {layout.z_channels}"
    if layout.out_channels < 1:
        return f"out_channels must be >= 1, found {layout.out_channels}"
    if layout.num_res_blocks < 1:
        return f"num_res_blocks must be >= 1, found {layout.num_res_blocks}"
    if not layout.level_channels:
        return "level_channels is empty: the decoder needs at least one level"
    for level, channels in enumerate(layout.level_channels):
        if channels < NORM_GROUPS or channels % NORM_GROUPS:
            return (f"level {level} has {channels} channels, which GroupNorm({NORM_GROUPS}) cannot split: "
                    f"expected a positive multiple of {NORM_GROUPS}")
    return None


def _ddconfig_int(ddconfig: dict, key: str, source: str) -> int:
    if key not in ddconfig:
        raise CheckpointError(f"{source}: ddconfig has no '{key}'; expected an integer there")
    value = ddconfig[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{source}: ddconfig '{key}' must be an integer, found {value!r}")
    return value


def layout_from_ddconfig(ddconfig: dict, gan_decoder: bool, source: str) -> DecoderLayout:
    """Build the layout the release's ``Decoder``/``GANDecoder(**ddconfig)`` has.

    Reads ``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels`` and ``out_ch``; other keys are encoder-only.
    """
    ch = _ddconfig_int(ddconfig, "ch", source)
    if "ch_mult" not in ddconfig:
        raise CheckpointError(f"{source}: ddconfig has no 'ch_mult'; expected a list of integers there")
    ch_mult = ddconfig["ch_mult"]
    if not isinstance(ch_mult, (list, tuple)) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in ch_mult):
        raise CheckpointError(f"{source}: ddconfig 'ch_mult' must be a list of integers, found {ch_mult!r}")
    if not isinstance(gan_decoder, bool):
        raise CheckpointError(f"{source}: 'gan_decoder' must be true or false, found {gan_decoder!r}")
    layout = DecoderLayout(
        z_channels=_ddconfig_int(ddconfig, "z_channels", source),
        level_channels=tuple(ch * m for m in ch_mult),
        num_res_blocks=_ddconfig_int(ddconfig, "num_res_blocks", source),
        out_channels=_ddconfig_int(ddconfig, "out_ch", source),
        gan_decoder=gan_decoder,
    )
    problem = _layout_problem(layout)
    if problem is not None:
        raise CheckpointError(f"{source}: ddconfig {ddconfig!r} gives an unusable decoder: {problem}")
    return layout


def _res_block_shapes(prefix: str, in_channels: int, out_channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}.norm1.weight": (in_channels,),
        f"{prefix}.norm1.bias": (in_channels,),
        f"{prefix}.norm2.weight": (out_channels,),
        f"{prefix}.norm2.bias": (out_channels,),
        f"{prefix}.conv1.weight": (out_channels, in_channels, 3, 3),
        f"{prefix}.conv2.weight": (out_channels, out_channels, 3, 3),
    }
    if in_channels != out_channels:
        shapes[f"{prefix}.nin_shortcut.weight"] = (out_channels, in_channels, 1, 1)
    return shapes


def expected_shapes(layout: DecoderLayout) -> dict[str, tuple[int, ...]]:
    """Every parameter name of the decoder with ``layout`` mapped to its shape, in state-dict order."""
    deepest = layout.level_channels[-1]
    shapes: dict[str, tuple[int, ...]] = {
        "conv_in.weight": (deepest, layout.conv_in_channels, 3, 3),
        "conv_in.bias": (deepest,),
    }
    for index in range(layout.num_res_blocks):
        shapes.update(_res_block_shapes(f"mid_block.{index}", deepest, deepest))
    for level, channels in enumerate(layout.level_channels):
        block_in = layout.style_channels(level)
        for index in range(layout.num_res_blocks):
            shapes.update(_res_block_shapes(f"up.{level}.block.{index}", block_in, channels))
            block_in = channels
        if level > 0:
            shapes[f"up.{level}.upsample.conv1.weight"] = (4 * channels, channels, 3, 3)
            shapes[f"up.{level}.upsample.conv1.bias"] = (4 * channels,)
    for level in range(len(layout.level_channels)):
        channels = layout.style_channels(level)
        for name in ("gamma", "beta"):
            shapes[f"adaptive.{level}.{name}.weight"] = (channels, layout.z_channels)
            shapes[f"adaptive.{level}.{name}.bias"] = (channels,)
    first = layout.level_channels[0]
    shapes["norm_out.weight"] = (first,)
    shapes["norm_out.bias"] = (first,)
    shapes["conv_out.weight"] = (layout.out_channels, first, 3, 3)
    shapes["conv_out.bias"] = (layout.out_channels,)
    return shapes


def _required_shape(state: Mapping[str, Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state:
        hint = ""
        if any(name.startswith("decoder.") for name in state):
            hint = " (the keys still carry the 'decoder.' prefix: strip it before calling infer_layout)"
        raise CheckpointError(f"{source}: decoder key '{key}' is missing{hint}; the tensors do not form a "
                              f"binary-token decoder")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: decoder key '{key}' has shape {list(shape)}, expected a "
                              f"{ndim}-dimensional tensor")
    return shape


def _index_count(state: Mapping[str, Tensor], prefix: str, source: str) -> int:
    """One more than the largest integer n such that some key starts with ``prefix + n + '.'``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(match.group(1)) for name in state if (match := pattern.match(name))]
    if not indices:
        raise CheckpointError(f"{source}: no decoder key starts with '{prefix}0.'; the tensors do not form a "
                              f"binary-token decoder with at least one level and one residual block")
    return max(indices) + 1


def check_decoder_state(state: Mapping[str, Tensor], layout: DecoderLayout, source: str) -> None:
    """Raise CheckpointError unless ``state`` holds exactly the decoder keys of ``layout`` with their shapes."""
    expected = expected_shapes(layout)
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: decoder key '{key}' (shape {list(shape)}) is missing for layout "
                                  f"{layout}")
        found = tuple(state[key].shape)
        if found != shape:
            raise CheckpointError(f"{source}: decoder key '{key}' has shape {list(found)}, expected "
                                  f"{list(shape)} for layout {layout}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected decoder key '{unexpected[0]}' ({len(unexpected)} unexpected "
                              f"in all) for layout {layout}; pass only the decoder's tensors, without the "
                              f"'decoder.' prefix")


def infer_layout(decoder_state: Mapping[str, Tensor], source: str) -> DecoderLayout:
    """Recover the layout from the decoder's tensors (keys WITHOUT the 'decoder.' prefix), then check every key.

    Raises CheckpointError (naming ``source`` and the key) when the keys do not form a decoder.
    """
    z_channels = _required_shape(decoder_state, "adaptive.0.gamma.weight", 2, source)[1]
    conv_in_channels = _required_shape(decoder_state, "conv_in.weight", 4, source)[1]
    if conv_in_channels == 2 * z_channels:
        gan_decoder = True
    elif conv_in_channels == z_channels:
        gan_decoder = False
    else:
        raise CheckpointError(f"{source}: decoder key 'conv_in.weight' takes {conv_in_channels} input channels, "
                              f"expected {z_channels} (plain) or {2 * z_channels} (GAN decoder) for "
                              f"{z_channels} token channels")
    num_levels = _index_count(decoder_state, "up.", source)
    num_res_blocks = _index_count(decoder_state, "up.0.block.", source)
    level_channels = tuple(
        _required_shape(decoder_state, f"up.{level}.block.0.conv1.weight", 4, source)[0]
        for level in range(num_levels))
    out_channels = _required_shape(decoder_state, "conv_out.weight", 4, source)[0]
    layout = DecoderLayout(z_channels, level_channels, num_res_blocks, out_channels, gan_decoder)
    problem = _layout_problem(layout)
    if problem is not None:
        raise CheckpointError(f"{source}: the decoder tensors give an unusable layout: {problem}")
    check_decoder_state(decoder_state, layout, source)
    return layout


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def depth_to_space(x: Tensor) -> Tensor:
    """``[B, 4C, H, W] -> [B, C, 2H, 2W]`` with ``out[b, c, 2y+i, 2x+j] = x[b, (2i+j)*C + c, y, x]`` (DCR)."""
    batch, channels, height, width = x.shape
    blocks = x.view(batch, 2, 2, channels // 4, height, width)
    return blocks.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels // 4, 2 * height, 2 * width)


def token_statistics(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(sqrt(var + eps), mean)`` of ``z`` over its positions, each ``[B, C]``; var is Bessel-corrected."""
    flat = z.flatten(2)
    return (flat.var(dim=-1) + STYLE_EPS).sqrt(), flat.mean(dim=-1)


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h + shortcut


class TokenStyledGroupNorm(nn.Module):
    """Affine-free GroupNorm whose per-channel scale and shift are linear maps of the token map's statistics."""

    def __init__(self, z_channels: int, channels: int):
        super().__init__()
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: Tensor, token_std: Tensor, token_mean: Tensor) -> Tensor:
        scale = self.gamma(token_std)[:, :, None, None]
        shift = self.beta(token_mean)[:, :, None, None]
        return scale * F.group_norm(x, NORM_GROUPS, eps=NORM_EPS) + shift


class DepthToSpaceUpsampler(nn.Module):
    """3x3 conv to 4x channels, then depth-to-space x2: ``[B, C, H, W] -> [B, C, 2H, 2W]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return depth_to_space(self.conv1(x))


class DecoderLevel(nn.Module):
    """The residual blocks of one level, then the upsampler (absent at level 0)."""

    def __init__(self, in_channels: int, channels: int, num_res_blocks: int, upsample: bool):
        super().__init__()
        widths = [in_channels] + [channels] * num_res_blocks
        self.block = nn.ModuleList(ResBlock(widths[i], widths[i + 1]) for i in range(num_res_blocks))
        self.upsample = DepthToSpaceUpsampler(channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class TokenDecoder(nn.Module):
    """The release's ``Decoder`` / ``GANDecoder``; parameter names equal its keys without the ``decoder.`` prefix.

    Constructible on the meta device (``with torch.device("meta")``) and loadable with
    ``load_state_dict(state, strict=True, assign=True)``.
    """

    def __init__(self, layout: DecoderLayout):
        super().__init__()
        problem = _layout_problem(layout)
        if problem is not None:
            raise InvalidRequestError(f"TokenDecoder: unusable layout {layout}: {problem}")
        self.layout = layout
        deepest = layout.level_channels[-1]
        self.conv_in = nn.Conv2d(layout.conv_in_channels, deepest, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(deepest, deepest) for _ in range(layout.num_res_blocks))
        self.up = nn.ModuleList(
            DecoderLevel(layout.style_channels(level), channels, layout.num_res_blocks, upsample=level > 0)
            for level, channels in enumerate(layout.level_channels))
        self.adaptive = nn.ModuleList(
            TokenStyledGroupNorm(layout.z_channels, layout.style_channels(level))
            for level in range(len(layout.level_channels)))
        self.norm_out = nn.GroupNorm(NORM_GROUPS, layout.level_channels[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(layout.level_channels[0], layout.out_channels, 3, padding=1)

    def _check_tokens(self, z: Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.layout.z_channels:
            raise InvalidRequestError(f"TokenDecoder: z has shape {list(z.shape)}, expected "
                                      f"[batch, {self.layout.z_channels}, h, w]")
        if z.shape[2] * z.shape[3] < 2:
            raise InvalidRequestError(f"TokenDecoder: z has a {z.shape[2]}x{z.shape[3]} token grid; the "
                                      f"Bessel-corrected token variance needs at least 2 positions")
        weight = self.conv_in.weight
        if z.dtype != weight.dtype or z.device != weight.device:
            raise InvalidRequestError(f"TokenDecoder: z is {z.dtype} on {z.device}, but the decoder's weights are "
                                      f"{weight.dtype} on {weight.device}; convert one to match the other")

    def _noise_like(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        if generator is None:
            raise InvalidRequestError("TokenDecoder: this is a GAN decoder, which appends a standard-normal noise "
                                      "map to the tokens; pass a torch.Generator as `generator`")
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=generator.device)
        return noise.to(z.device)

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``z: [B, z_channels, h, w]`` -> ``[B, out_channels, h*ds, w*ds]``.

        A GAN decoder draws its noise map as ``torch.randn(z.shape, generator=generator, dtype=z.dtype)`` on the
        generator's device (``generator`` is required then); a plain decoder ignores ``generator``.
        """
        self._check_tokens(z)
        token_std, token_mean = token_statistics(z)
        x = torch.cat([z, self._noise_like(z, generator)], dim=1) if self.layout.gan_decoder else z
        x = self.conv_in(x)
        for block in self.mid_block:
            x = block(x)
        for level in reversed(range(len(self.up))):
            x = self.adaptive[level](x, token_std, token_mean)
            x = self.up[level](x)
        return self.conv_out(swish(self.norm_out(x)))
