"""Print (and optionally write) a Markdown table from a pytest-benchmark JSON file of ``bench/``.

    python bench/summarize.py bench.json [--md bench/results/<gpu>-<commit>.md]

One row per benchmark: our CUDA-event time, the floor of the shape, our time over it, and the time of each
candidate recorded beside ours (the PyTorch reference, SDPA, flash-attn, the Triton kernel, ...). The header names
the GPU, driver, torch, triton and the commit measured, as every committed table must.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ENV_KEYS = ("gpu", "driver", "torch", "triton", "commit")


def _us(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1e6:.1f}"


def table(doc: dict) -> str:
    rows = doc.get("benchmarks", [])
    env = next((r["extra_info"] for r in rows if "gpu" in r.get("extra_info", {})), {})
    candidates = sorted({k[:-2] for r in rows for k in r.get("extra_info", {})
                         if k.endswith("_s") and k not in ("ours_s", "floor_s")})
    lines = [" · ".join(f"{k} {env.get(k, '?')}" for k in ENV_KEYS), "",
             "| benchmark | ours µs | floor µs | ours/floor | " + " | ".join(f"{c} µs" for c in candidates) + " |",
             "|---" * (4 + len(candidates)) + "|"]
    for r in rows:
        info = r.get("extra_info", {})
        ratio = info.get("ours_over_floor")
        lines.append(f"| {r['name']} | {_us(info.get('ours_s'))} | {_us(info.get('floor_s'))} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | "
                     + " | ".join(_us(info.get(f"{c}_s")) for c in candidates) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    p.add_argument("--md", type=Path, help="also write the table to this Markdown file")
    args = p.parse_args()
    text = table(json.loads(args.json.read_text()))
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
