"""Shapes of the released models that the microbenchmarks time (spec §2, §3).

Text-to-image 14B (Qwen3): hidden 5120, 40 query heads on 8 KV heads of 128 channels, guidance batch 2 (one
conditional, one unconditional row), P = 64 or 16, cache up to 4,160 positions (a 1024x1024 image's 4,096 tokens
plus the prompt). Its head: 5120 wide, 128-channel attention heads, 6 blocks. Class-conditional B/L/H at batch 256
(512 rows with guidance), 64-channel heads.
"""

T2I_14B = {"hidden": 5120, "q_heads": 40, "kv_heads": 8, "head_dim": 128, "head_width": 5120, "head_attn_dim": 128,
           "token_channels": 32}
T2I_DECODE = [  # (batch rows, P, cached length)
    (2, 64, 4160), (2, 64, 1024), (2, 16, 4160), (2, 16, 1024)]
T2I_HEAD_TOKENS = 128  # batch 1 with guidance: 2 rows x P = 64

C2I_SIZES = {  # name: (dim, heads, head width)
    "B": (768, 12, 768), "L": (1024, 16, 1024), "H": (1280, 20, 1280)}
C2I_BATCH = 256
C2I_ROWS = 2 * C2I_BATCH  # with guidance
C2I_PARALLEL = (1, 4, 16)
C2I_PREFIX = 64  # class tokens; + P - 1 query tokens
C2I_TOKENS = 256
