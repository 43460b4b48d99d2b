"""Train the small class-conditional BitDance on scikit-learn's digits and write it in the release's file format.

    python tools/train_digits.py --out bitdance_rt/assets/digits      # the shipped files

What it trains (sizes read back from the files by ``Runtime.from_pretrained``, like any checkpoint):

- the binary tokenizer: 8x8 digits upsampled to 16x16 RGB, an encoder of our own to a 4x4 grid of 32-bit tokens
  (downsample 4), sign quantization with a straight-through estimator, and the runtime's token decoder;
- the AR model: the runtime's class-conditional backbone (width 128, 3 layers, 10 classes + the null class, 4 class
  tokens, P = 4 tokens per step with 3 query tokens: 4 AR steps per image) and diffusion head (width 128, 2
  TransBlocks, 2 adaLN linears), trained with the release's flow-matching loss, label dropout and token flips;
- the quality gate's digit classifier.

Then it loads the written files with ``Runtime.from_pretrained`` (reference backend), runs the quality gate on the
recorded labels and seeds and writes ``run.json`` (seed, times, sizes, figures, the script's version). Deterministic
from ``--seed`` for a given machine and thread count. Needs scikit-learn (``pip install -e '.[train]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bitdance_rt.digits.assets import CLASSIFIER_FILE, MODEL_FILE, RECORD_FILE, TOKENIZER_FILE  # noqa: E402
from bitdance_rt.digits.classifier import load_classifier, save_classifier  # noqa: E402
from bitdance_rt.digits.pixels import digits_to_images, images_to_digits  # noqa: E402
from bitdance_rt.outputs import to_pixels  # noqa: E402
from bitdance_rt.reference.c2i_backbone import C2IConfig  # noqa: E402
from bitdance_rt.reference.diffusion_head import DiffusionHeadConfig  # noqa: E402
from bitdance_rt.reference.patch_order import to_patch_raster  # noqa: E402
from bitdance_rt.reference.token_decoder import DecoderLayout  # noqa: E402
from bitdance_rt.runtime import Runtime  # noqa: E402
from digits_training import classifier as classifier_training  # noqa: E402
from digits_training import data, generator, tokenizer  # noqa: E402

SCRIPT_VERSION = 1
SIDE = 16                  # image side in pixels (the 8x8 digits upsampled twice)
TOKEN_CHANNELS = 32        # C, as every released tokenizer
DECODER_CHANNELS = (32, 32, 32)  # levels 0..2: downsample 4, so a 4x4 token grid
PARALLEL = 4               # P: 2x2 patches, 4 AR steps per image
NUM_CLASSES = 10
CLASS_TOKENS = 4
DIM, LAYERS = 128, 3
HEAD_WIDTH, HEAD_BLOCKS, HEAD_ADALN = 128, 2, 2
GATE_SEED_STRIDE = 100     # gate seeds 0, 100, 200, ...: the engine's image seeds (seed + label index) stay distinct


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bitdance_rt" / "assets" / "digits"), help="folder for the files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (results depend on it; a second thread only waited on a shared 2-core machine)")
    p.add_argument("--tokenizer-steps", type=int, default=800)
    p.add_argument("--generator-steps", type=int, default=2000)
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32, help="generator batch (images)")
    p.add_argument("--diff-batch-mul", type=int, default=2)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--sampling-steps", type=int, default=4, help="recorded default for the demo and the gate")
    p.add_argument("--guidance", type=float, default=4.0, help="recorded default for the demo and the gate")
    p.add_argument("--gate-seeds", type=int, default=30, help="the gate generates every digit once per seed")
    p.add_argument("--skip-gate", action="store_true", help="write the files without running the gate (tests)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def classify_accuracy(net, digits: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(digits).argmax(-1) == labels).double().mean())


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    stages: dict[str, float] = {}

    digits = data.load()
    images = digits_to_images(digits.features, SIDE)

    t0 = time.perf_counter()
    train, heldout = data.split(digits, 0.2, torch.Generator().manual_seed(a.seed + 1))
    net, feat_mean, feat_cov, heldout_acc = classifier_training.train_classifier(
        train, heldout, digits, SIDE, steps=a.classifier_steps, generator=torch.Generator().manual_seed(a.seed + 2))
    save_classifier(out / CLASSIFIER_FILE, net, feat_mean, feat_cov, heldout_acc)
    stages["classifier_s"] = time.perf_counter() - t0
    log(f"classifier: held-out accuracy {heldout_acc:.4f} ({stages['classifier_s']:.0f} s)")

    t0 = time.perf_counter()
    layout = DecoderLayout(TOKEN_CHANNELS, DECODER_CHANNELS, num_res_blocks=1, out_channels=3, gan_decoder=False)
    encoder, decoder, tok_figures = tokenizer.train_tokenizer(
        images, layout, steps=a.tokenizer_steps, batch=64, lr=2e-3, commitment=0.25, flip_max=0.04, shift=1,
        generator=torch.Generator().manual_seed(a.seed + 3), log=log)
    token_maps = tokenizer.encode_all(encoder, images)
    with torch.no_grad():
        recon = images_to_digits(to_pixels(tokenizer.decode_all(decoder, token_maps)))
    tok_figures["reconstruction_classifier_accuracy"] = classify_accuracy(net, recon, digits.labels)
    stages["tokenizer_s"] = time.perf_counter() - t0
    log(f"tokenizer: {tok_figures} ({stages['tokenizer_s']:.0f} s)")

    t0 = time.perf_counter()
    grid = SIDE // layout.downsample
    cfg = C2IConfig(dim=DIM, num_layers=LAYERS, num_heads=DIM // 64, token_channels=TOKEN_CHANNELS,
                    parallel=PARALLEL, grid=grid, class_tokens=CLASS_TOKENS, num_classes=NUM_CLASSES)
    head_cfg = DiffusionHeadConfig(token_channels=TOKEN_CHANNELS, cond_channels=DIM, width=HEAD_WIDTH,
                                   depth=HEAD_BLOCKS, num_adaln=HEAD_ADALN, block_kind="trans", attn_head_dim=64)
    tokens = to_patch_raster(token_maps, grid, grid, int(PARALLEL ** 0.5))
    gen = generator.build(cfg, head_cfg)
    ema = generator.train_generator(
        gen, tokens, digits.labels, steps=a.generator_steps, batch=a.batch, lr=a.lr, min_lr=a.lr / 20,
        warmup=min(200, a.generator_steps // 10 + 1), weight_decay=0.05, ema_decay=a.ema, perturb_rate=0.1,
        diff_batch_mul=a.diff_batch_mul, rng=torch.Generator().manual_seed(a.seed + 4), log=log)
    stages["generator_s"] = time.perf_counter() - t0

    enc_state = {f"encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    dec_state = {f"decoder.{k}": v.detach().clone() for k, v in decoder.state_dict().items()}
    model_state = ema.release_state_dict()
    model_state.update({f"vae.{k}": v for k, v in {**enc_state, **dec_state}.items()})
    torch.save({"ema": model_state}, out / MODEL_FILE)
    torch.save({"state_dict": {**enc_state, **dec_state}}, out / TOKENIZER_FILE)
    train_seconds, train_cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    log(f"trained in {train_seconds:.0f} s ({train_cpu:.0f} s of CPU); wrote {out / MODEL_FILE} and {out / TOKENIZER_FILE}")

    record = {
        "script": "tools/train_digits.py", "script_version": SCRIPT_VERSION, "seed": a.seed, "threads": a.threads,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1), "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "skip_gate")},
        "model": {"image_size": SIDE, "downsample": layout.downsample, "token_grid": grid,
                  "token_channels": TOKEN_CHANNELS, "tokens_per_step": PARALLEL, "num_classes": NUM_CLASSES,
                  "class_tokens": CLASS_TOKENS, "dim": DIM, "layers": LAYERS, "head_width": HEAD_WIDTH,
                  "head_blocks": HEAD_BLOCKS, "decoder_channels": list(DECODER_CHANNELS)},
        "sampling": {"num_sampling_steps": a.sampling_steps, "guidance_scale": a.guidance},
        "classifier": {"heldout_accuracy": heldout_acc, "heldout_fraction": 0.2},
        "tokenizer": tok_figures,
    }
    if not a.skip_gate:
        record["gate"] = run_gate(out, a, digits, net, load_classifier(out / CLASSIFIER_FILE))
    record["files"] = {name: file_entry(out / name) for name in (MODEL_FILE, TOKENIZER_FILE, CLASSIFIER_FILE)}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"total {time.perf_counter() - t_start:.0f} s; record in {out / RECORD_FILE}")
    return 0


def run_gate(out: Path, a: argparse.Namespace, digits: data.Digits, net, classifier) -> dict:
    """The gate on the written files (reference backend), plus the same figures for as many real digits."""
    from bitdance_rt.quality.digits_gate import evaluate, score_digits

    t0 = time.perf_counter()
    rt = Runtime.from_pretrained(out / MODEL_FILE, tokenizer_path=out / TOKENIZER_FILE, device="cpu",
                                 dtype=torch.float32, backend="reference")
    labels, seeds = list(range(NUM_CLASSES)), [GATE_SEED_STRIDE * k for k in range(a.gate_seeds)]
    figures = evaluate(rt, labels, seeds, num_sampling_steps=a.sampling_steps, guidance_scale=a.guidance,
                       classifier=classifier)
    gate_seconds = time.perf_counter() - t0
    pick = torch.randperm(len(digits), generator=torch.Generator().manual_seed(a.seed + 5))[:figures["num_images"]]
    real = score_digits(classifier_training.round_trip(digits.features[pick], SIDE), digits.labels[pick], classifier)
    log(f"gate (reference): accuracy {figures['accuracy']:.4f}, mean confidence {figures['mean_confidence']:.4f}, "
        f"Fréchet distance {figures['frechet_distance']:.2f} (real digits, same count: accuracy "
        f"{real['accuracy']:.4f}, Fréchet {real['frechet_distance']:.2f}) ({gate_seconds:.0f} s)")
    return {"backend": "reference", "via": "generate", "labels": labels, "seeds": seeds,
            "num_sampling_steps": a.sampling_steps, "guidance_scale": a.guidance,
            "accuracy": figures["accuracy"], "mean_confidence": figures["mean_confidence"],
            "frechet_distance": figures["frechet_distance"], "per_class_accuracy": figures["per_class_accuracy"],
            "predicted": figures["predicted"], "real_accuracy": real["accuracy"],
            "real_mean_confidence": real["mean_confidence"], "real_frechet_distance": real["frechet_distance"],
            "seconds": round(gate_seconds, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
