#!/usr/bin/env python3
"""Reference side of `glimpse bench`: transformers on PyTorch (CPU).

Two subcommands:

* ``make-models --out DIR`` writes the real-size benchmark architectures with random
  weights (fixed seed) as Hugging Face checkpoint directories (``config.json``,
  ``model.safetensors`` in f32, or shards plus ``model.safetensors.index.json`` for the
  BLIP-2 and LLaVA models, ``preprocessor_config.json``). Glimpse loads exactly these
  directories, so both sides time the same weights. A directory that already holds a
  config and weights is left alone.
* ``time --model DIR --workload W --reps N --warmup N [--new-tokens N]`` loads one
  model, runs the workload ``warmup`` times untimed and ``reps`` times timed, and prints
  one JSON line: per-rep wall seconds, their median, load time, the process's peak RSS
  and the torch thread count; for the streaming workloads (``blip2-opt``,
  ``llava-llama``) also the time to first token and the time per generated token of
  each rep. Run one process per workload so that each peak RSS is its own. The
  ``matmul`` workload (``torch.matmul`` of two square f32 matrices: the peak matrix
  rate) needs no model and no ``--model``.

Inputs are random tensors of the shapes that the Rust side uses (see WORKLOADS), and for
BLIP-2 and LLaVA the same token ids; the timed call is the public API a user would call
(``get_image_features``, ``get_text_features``, ``generate``).
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
BLIP2_DIR = "blip2-vitb16-opt-125m"
LLAVA_DIR = "llava-clip-b32-llama-1b"

# name -> (model directory or None, description). Shapes are repeated in crates/glimpse-bench (workload.rs); keep
# in step.
WORKLOADS = {
    "matmul": (None, "f32 square matmul C = A @ B, n = 2048, 4 per call (peak rate)"),
    "matmul-i8": (None, "the same products, quantize_dynamic int8 nn.Linear (int8 peak)"),
    "clip-image-b1": (CLIP_DIR, "CLIP ViT-B/32 get_image_features, batch 1, 224 px"),
    "clip-image-b8": (CLIP_DIR, "CLIP ViT-B/32 get_image_features, batch 8, 224 px"),
    "clip-text-b32": (CLIP_DIR, "CLIP text get_text_features, batch 32, 16 tokens"),
    "blip-caption": (BLIP_DIR, "BLIP base captioning, 384 px, 20 greedy tokens, batch 1"),
    "blip-caption-beam3": (BLIP_DIR, "BLIP base captioning, 384 px, 20 tokens, 3 beams"),
    "blip2-opt": (
        BLIP2_DIR,
        "BLIP-2 (ViT-B/16 224 px, Q-Former, OPT-125M) generate, greedy, 32 tokens streamed",
    ),
    "llava-llama": (
        LLAVA_DIR,
        "LLaVA (CLIP ViT-B/32 224 px, LLaMA 1.1B) generate, greedy, 32 tokens streamed",
    ),
    "clip-image-b8-q8": (CLIP_DIR, "clip-image-b8 with every nn.Linear dynamic int8"),
    "clip-text-b32-q8": (CLIP_DIR, "clip-text-b32 with every nn.Linear dynamic int8"),
    "blip-caption-q8": (BLIP_DIR, "blip-caption with every nn.Linear dynamic int8"),
}
# Workloads run with torch.ao.quantization.quantize_dynamic (int8 weights per tensor,
# activations quantised per call) on every nn.Linear; Glimpse runs them with its
# 8-bit encoders (--quantize q8).
INT8_SUFFIX = "-q8"
CLIP_TEXT_BATCH, CLIP_TEXT_LEN = 32, 16
# matmul: MATMUL_COUNT products of two MATMUL_N x MATMUL_N f32 matrices per timed call.
MATMUL_N = 2048
MATMUL_COUNT = 4
CAPTION_TOKENS = 20
# Streaming workloads: new tokens per call (forced: min_new_tokens = max_new_tokens).
STREAM_TOKENS = 32
STREAM_WORKLOADS = ("blip2-opt", "llava-llama")

# Synthetic prompt ids, the same on the Rust side (crates/glimpse-bench). BLIP-2: OPT's bos and seven
# ids after the 32 query placeholders. LLaVA: bos and two ids, the image placeholders
# (one per patch), five ids.
BLIP2_TEXT_IDS = [2, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
LLAVA_IDS_BEFORE = [1, 1000, 2000]
LLAVA_IDS_AFTER = [3000, 4000, 5000, 6000, 7000]

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


def blip2_config():
    from transformers import Blip2Config

    # BLIP-2's Q-Former and an OPT-125M-size language model (facebook/opt-125m), with a
    # ViT-B/16-size vision tower at 224 px instead of EVA ViT-g (1408 wide, 39 layers,
    # ~1 B parameters), which would make the prefill a vision benchmark on small CPUs.
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    qformer = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        cross_attention_frequency=2,
    )
    text = dict(
        model_type="opt",
        vocab_size=50272,
        hidden_size=768,
        word_embed_proj_dim=768,
        ffn_dim=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=2048,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    # image_token_index as in the current Salesforce/blip2-opt-* configs.
    return Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=32,
        image_token_index=50265,
    )


def llava_config():
    from transformers import LlavaConfig

    # A CLIP ViT-B/32 tower at 224 px (49 image tokens) instead of LLaVA-1.5's
    # ViT-L/14 at 336 px, and a LLaMA of 1.1 B parameters (Llama-3.2-1B shape:
    # 2048 wide, 16 layers, 32 heads, 8 KV heads, MLP 8192; LLaVA-1.5's vocabulary of
    # 32064 with <image> = 32000; untied head).
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
        projection_dim=512,
    )
    text = dict(
        model_type="llama",
        vocab_size=32064,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32001,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        image_seq_length=49,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=32001,
        tie_word_embeddings=False,
    )


def make_models(out: Path) -> None:
    import torch
    import transformers
    from transformers import (
        Blip2ForConditionalGeneration,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        CLIPImageProcessor,
        CLIPModel,
        LlavaForConditionalGeneration,
    )

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    clip_processor = lambda: CLIPImageProcessor(  # noqa: E731
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    )
    # (directory, model, image processor, max_shard_size): the BLIP-2 (~1.3 GB) and
    # LLaVA (~4.4 GB) checkpoints are written in shards so the sharded loader is timed.
    builders = [
        (
            CLIP_DIR,
            lambda: CLIPModel(clip_config()),
            clip_processor,
            None,
        ),
        (
            BLIP_DIR,
            lambda: BlipForConditionalGeneration(blip_config()),
            lambda: BlipImageProcessor(
                size={"height": 384, "width": 384},
                image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD,
            ),
            None,
        ),
        (
            BLIP2_DIR,
            lambda: Blip2ForConditionalGeneration(blip2_config()),
            lambda: BlipImageProcessor(
                size={"height": 224, "width": 224},
                image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD,
            ),
            "1GB",
        ),
        (
            LLAVA_DIR,
            lambda: LlavaForConditionalGeneration(llava_config()),
            clip_processor,
            "2GB",
        ),
    ]
    for name, build_model, build_processor, shard in builders:
        path = out / name
        if has_checkpoint(path):
            log(f"{path}: exists, kept")
            continue
        log(f"{path}: building with random weights (seed {SEED})")
        torch.manual_seed(SEED)
        model = build_model().to(torch.float32).eval()
        if shard is None:
            model.save_pretrained(path)
        else:
            model.save_pretrained(path, max_shard_size=shard)
        build_processor().save_pretrained(path)
        n = sum(p.numel() for p in model.parameters())
        log(f"{path}: {n / 1e6:.1f} M parameters written")


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_now_bytes() -> int | None:
    """Current resident set (Linux ``VmRSS``); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class TokenStamps(list):
    """What a streaming step returns: the `perf_counter` time of each new token."""


def token_clock():
    """A streamer that timestamps every new token as `generate` hands it over (on the
    CPU, right after the token is chosen). Its first `put` is the prompt, not a token."""
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        def __init__(self):
            self.stamps = TokenStamps()
            self.prompt_seen = False

        def put(self, value):
            now = time.perf_counter()
            if self.prompt_seen:
                self.stamps.append(now)
            self.prompt_seen = True

        def end(self):
            pass

    return TokenClock()


def build_stream_workload(name: str, model_dir: Path, new_tokens: int, gen):
    """BLIP-2 or LLaVA `generate` from an image and fixed prompt ids, exactly
    `new_tokens` greedy tokens, each timestamped by a streamer."""
    import torch
    from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

    if name == "blip2-opt":
        model = Blip2ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        cfg = model.config
        # What Blip2Processor builds: one placeholder per query, then the text ids.
        ids = [cfg.image_token_index] * cfg.num_query_tokens + BLIP2_TEXT_IDS
    else:
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        cfg = model.config
        vc = cfg.vision_config
        # "default" feature selection: one <image> per patch (the CLS position is dropped).
        ids = LLAVA_IDS_BEFORE + [cfg.image_token_index] * (vc.image_size // vc.patch_size) ** 2
        ids += LLAVA_IDS_AFTER
    size = cfg.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen)
    input_ids = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(input_ids)

    def step():
        clock = token_clock()
        model.generate(
            pixel_values=pixels,
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            num_beams=1,
            do_sample=False,
            streamer=clock,
        )
        if len(clock.stamps) != new_tokens:
            raise SystemExit(f"{name}: generated {len(clock.stamps)} tokens, expected {new_tokens}")
        return clock.stamps

    return model, step, new_tokens


def int8(model):
    """``model`` with every ``nn.Linear`` replaced in place by PyTorch's dynamic int8
    linear layer (the quantised engine's kernels: fbgemm or onednn on x86)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of torch.ao.quantization
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


def build_workload(name: str, model_dir: Path | None, new_tokens: int = STREAM_TOKENS):
    """Loads the model and returns (model, step function, items per step); for
    ``matmul`` the model is None."""
    import torch
    from transformers import BlipForConditionalGeneration, CLIPModel

    gen = torch.Generator().manual_seed(SEED)
    if name == "matmul-i8":
        a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
        linear = torch.nn.Linear(MATMUL_N, MATMUL_N, bias=False)
        linear.weight.data = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
        linear = int8(torch.nn.Sequential(linear))

        def step():
            for _ in range(MATMUL_COUNT):
                c = linear(a)
            return c

        return None, step, 1
    if name.endswith(INT8_SUFFIX):
        model, step, items = build_workload(name.removesuffix(INT8_SUFFIX), model_dir, new_tokens)
        return int8(model), step, items
    if name == "matmul":
        # Inputs made once; the call is the kernel behind every linear layer of the models.
        a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
        b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)

        def step():
            for _ in range(MATMUL_COUNT):
                c = torch.matmul(a, b)
            return c

        return None, step, 1
    if name in STREAM_WORKLOADS:
        return build_stream_workload(name, model_dir, new_tokens, gen)
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


def time_workload(
    model_dir: Path | None, name: str, reps: int, warmup: int, new_tokens: int = STREAM_TOKENS
) -> dict:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if name not in WORKLOADS:
        raise SystemExit(f"--workload {name!r}: unknown; expected one of {', '.join(WORKLOADS)}")
    if WORKLOADS[name][0] is None:
        model_dir = None  # no model to load
    elif model_dir is None:
        raise SystemExit(f"--workload {name}: needs --model (a directory written by make-models)")
    elif not has_checkpoint(model_dir):
        raise SystemExit(f"--model {model_dir}: no config.json + model.safetensors (run make-models)")
    if reps < 1:
        raise SystemExit("--reps must be at least 1")
    if new_tokens < 2:
        raise SystemExit("--new-tokens must be at least 2 (per-token time needs two tokens)")

    t0 = time.perf_counter()
    model, step, items = build_workload(name, model_dir, new_tokens)
    load_s = time.perf_counter() - t0

    times, ttfts, per_tokens = [], [], []
    with torch.inference_mode():
        for i in range(warmup + reps):
            t = time.perf_counter()
            out = step()
            dt = time.perf_counter() - t
            what = "warmup" if i < warmup else "rep"
            if isinstance(out, TokenStamps):
                # First token: from the call to the first token (vision and prefill);
                # per token: the median gap between consecutive tokens of this call.
                ttft = out[0] - t
                per_token = statistics.median(b - a for a, b in zip(out, out[1:]))
                log(
                    f"  reference {name}: {what} {dt:.3f} s, first token {ttft:.3f} s, "
                    f"{per_token * 1e3:.1f} ms/token"
                )
                if i >= warmup:
                    ttfts.append(ttft)
                    per_tokens.append(per_token)
            else:
                log(f"  reference {name}: {what} {dt:.3f} s")
            if i >= warmup:
                times.append(dt)

    median = statistics.median(times)
    streaming = {}
    if ttfts:
        streaming = {
            "ttft_reps_s": ttfts,
            "ttft_median_s": statistics.median(ttfts),
            "per_token_reps_s": per_tokens,
            "per_token_median_s": statistics.median(per_tokens),
        }
    return {
        "side": "reference",
        "workload": name,
        "reps_s": times,
        "median_s": median,
        "warmup": warmup,
        "items_per_rep": items,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_end_bytes": rss_now_bytes(),
        "threads": torch.get_num_threads(),
        **streaming,
        "attn_implementation": attn_implementation(model),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def attn_implementation(model):
    """The attention implementation in use; for composite models, per part when the
    parts differ (e.g. ``vision_config=eager, text_config=sdpa``); None without a model."""
    if model is None:
        return None
    cfg = model.config
    top = getattr(cfg, "_attn_implementation", None)
    parts = {}
    for key in ("vision_config", "qformer_config", "text_config"):
        sub = getattr(cfg, key, None)
        impl = getattr(sub, "_attn_implementation", None) if sub is not None else None
        if impl is not None:
            parts[key] = impl
    if not parts or set(parts.values()) == {top}:
        return top
    return ", ".join(f"{k}={v}" for k, v in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-models", help="write the benchmark checkpoints (random weights)")
    mk.add_argument("--out", type=Path, required=True)
    tm = sub.add_parser("time", help="time one workload, print one JSON line")
    tm.add_argument(
        "--model",
        type=Path,
        help="a directory written by make-models (every workload but matmul)",
    )
    tm.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    tm.add_argument("--reps", type=int, default=5)
    tm.add_argument("--warmup", type=int, default=1)
    tm.add_argument(
        "--new-tokens",
        type=int,
        default=STREAM_TOKENS,
        help=f"new tokens per call for {', '.join(STREAM_WORKLOADS)} (default {STREAM_TOKENS})",
    )
    sub.add_parser("workloads", help="list workloads as JSON")
    args = parser.parse_args()

    if args.cmd == "make-models":
        make_models(args.out)
    elif args.cmd == "time":
        result = time_workload(args.model, args.workload, args.reps, args.warmup, args.new_tokens)
        print(json.dumps(result), flush=True)
    else:
        print(json.dumps({k: {"model": d, "about": a} for k, (d, a) in WORKLOADS.items()}))


if __name__ == "__main__":
    main()
