#!/usr/bin/env python3
"""Reference side of `glimpse bench`: transformers on PyTorch (CPU).

Two subcommands:

* ``make-models --out DIR`` writes the real-size benchmark architectures with random
  weights (fixed seed) as Hugging Face checkpoint directories (``config.json``,
  ``model.safetensors`` in f32, ``preprocessor_config.json``). Glimpse loads exactly these
  directories, so both sides time the same weights. A directory that already holds a
  config and weights is left alone.
* ``time --model DIR --workload W --reps N --warmup N`` loads one model, runs the
  workload ``warmup`` times untimed and ``reps`` times timed, and prints one JSON line:
  per-rep wall seconds, their median, load time, the process's peak RSS and the torch
  thread count. Run one process per workload so that each peak RSS is its own.

Inputs are random tensors of the shapes that the Rust side uses (see WORKLOADS); the
timed call is the public API a user would call (``get_image_features``,
``get_text_features``, ``generate``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 0

# Directory names under the models folder; the Rust side uses the same names.
CLIP_DIR = "clip-vit-base-patch32"
BLIP_DIR = "blip-image-captioning-base"

# name -> (model directory, description). Shapes are repeated in bench.rs; keep in step.
WORKLOADS = {
    "clip-image-b1": (CLIP_DIR, "CLIP ViT-B/32 get_image_features, batch 1, 224 px"),
    "clip-image-b8": (CLIP_DIR, "CLIP ViT-B/32 get_image_features, batch 8, 224 px"),
    "clip-text-b32": (CLIP_DIR, "CLIP text get_text_features, batch 32, 16 tokens"),
    "blip-caption": (BLIP_DIR, "BLIP base captioning, 384 px, 20 greedy tokens, batch 1"),
    "blip-caption-beam3": (BLIP_DIR, "BLIP base captioning, 384 px, 20 tokens, 3 beams"),
}
CLIP_TEXT_BATCH, CLIP_TEXT_LEN = 32, 16
CAPTION_TOKENS = 20

# OpenAI CLIP normalisation; the BLIP captioning checkpoints use the same numbers.
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def has_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    )


def clip_config():
    from transformers import CLIPConfig

    # openai/clip-vit-base-patch32.
    text = dict(
        vocab_size=49408,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        pad_token_id=1,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def blip_config():
    from transformers import BlipConfig

    # Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px, BERT-base decoder.
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=384,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    text = dict(
        vocab_size=30524,
        hidden_size=768,
        encoder_hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        bos_token_id=30522,
        eos_token_id=2,
        pad_token_id=0,
        sep_token_id=102,
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=512)


def make_models(out: Path) -> None:
    import torch
    import transformers
    from transformers import (
        BlipForConditionalGeneration,
        BlipImageProcessor,
        CLIPImageProcessor,
        CLIPModel,
    )

    transformers.utils.logging.set_verbosity_error()
    out.mkdir(parents=True, exist_ok=True)
    builders = [
        (
            CLIP_DIR,
            lambda: CLIPModel(clip_config()),
            lambda: CLIPImageProcessor(
                size={"shortest_edge": 224},
                crop_size={"height": 224, "width": 224},
                image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD,
            ),
        ),
        (
            BLIP_DIR,
            lambda: BlipForConditionalGeneration(blip_config()),
            lambda: BlipImageProcessor(
                size={"height": 384, "width": 384},
                image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD,
            ),
        ),
    ]
    for name, build_model, build_processor in builders:
        path = out / name
        if has_checkpoint(path):
            log(f"{path}: exists, kept")
            continue
        log(f"{path}: building with random weights (seed {SEED})")
        torch.manual_seed(SEED)
        model = build_model().to(torch.float32).eval()
        model.save_pretrained(path)
        build_processor().save_pretrained(path)
        n = sum(p.numel() for p in model.parameters())
        log(f"{path}: {n / 1e6:.1f} M parameters written")


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build_workload(name: str, model_dir: Path):
    """Loads the model and returns (model, step function, items per step, attention)."""
    import torch
    from transformers import BlipForConditionalGeneration, CLIPModel

    gen = torch.Generator().manual_seed(SEED)
    if name.startswith("clip-"):
        model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        if name.startswith("clip-image-b"):
            batch = int(name.removeprefix("clip-image-b"))
            size = model.config.vision_config.image_size
            pixels = torch.randn(batch, 3, size, size, generator=gen)

            def step():
                out = model.get_image_features(pixel_values=pixels)
                return _features(out)

            return model, step, batch
        # Token ids below bos/eos, then eos last so pooling picks the final position.
        eos = model.config.text_config.eos_token_id
        ids = torch.randint(0, 49406, (CLIP_TEXT_BATCH, CLIP_TEXT_LEN), generator=gen)
        ids[:, -1] = eos
        mask = torch.ones_like(ids)

        def step():
            out = model.get_text_features(input_ids=ids, attention_mask=mask)
            return _features(out)

        return model, step, CLIP_TEXT_BATCH

    model = BlipForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen)
    beams = 3 if name == "blip-caption-beam3" else 1

    def step():
        ids = model.generate(
            pixel_values=pixels,
            max_new_tokens=CAPTION_TOKENS,
            min_new_tokens=CAPTION_TOKENS,
            num_beams=beams,
            do_sample=False,
        )
        # The output starts with the BOS token that seeds the decoder.
        new = ids.shape[-1] - 1
        if new != CAPTION_TOKENS:
            raise SystemExit(f"{name}: generated {new} tokens, expected {CAPTION_TOKENS}")
        return ids

    return model, step, CAPTION_TOKENS


def _features(out):
    # transformers 5 may return a model output object instead of a bare tensor.
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return out[0]


def time_workload(model_dir: Path, name: str, reps: int, warmup: int) -> dict:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if name not in WORKLOADS:
        raise SystemExit(f"--workload {name!r}: unknown; expected one of {', '.join(WORKLOADS)}")
    if not has_checkpoint(model_dir):
        raise SystemExit(f"--model {model_dir}: no config.json + model.safetensors (run make-models)")
    if reps < 1:
        raise SystemExit("--reps must be at least 1")

    t0 = time.perf_counter()
    model, step, items = build_workload(name, model_dir)
    load_s = time.perf_counter() - t0

    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            t = time.perf_counter()
            step()
            dt = time.perf_counter() - t
            if i >= warmup:
                times.append(dt)
            log(f"  reference {name}: {'warmup' if i < warmup else 'rep'} {dt:.3f} s")

    median = statistics.median(times)
    return {
        "side": "reference",
        "workload": name,
        "reps_s": times,
        "median_s": median,
        "warmup": warmup,
        "items_per_rep": items,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-models", help="write the benchmark checkpoints (random weights)")
    mk.add_argument("--out", type=Path, required=True)
    tm = sub.add_parser("time", help="time one workload, print one JSON line")
    tm.add_argument("--model", type=Path, required=True, help="a directory written by make-models")
    tm.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    tm.add_argument("--reps", type=int, default=5)
    tm.add_argument("--warmup", type=int, default=1)
    sub.add_parser("workloads", help="list workloads as JSON")
    args = parser.parse_args()

    if args.cmd == "make-models":
        make_models(args.out)
    elif args.cmd == "time":
        print(json.dumps(time_workload(args.model, args.workload, args.reps, args.warmup)), flush=True)
    else:
        print(json.dumps({k: {"model": d, "about": a} for k, (d, a) in WORKLOADS.items()}))


if __name__ == "__main__":
    main()
