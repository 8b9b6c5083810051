"""Prove that a BLIP-2 stage-2 export (`glimpse export` of a `blip2_stage2` run, a
`Blip2ForConditionalGeneration` directory such as runs/export/blip2-stage2) loads in the reference
(transformers on PyTorch) and generates what `glimpse caption` and `glimpse ask` generate.

Usage:
    tools/.venv/bin/python tools/check_blip2_generation.py --glimpse target/debug/glimpse \
        --model runs/export/blip2-stage2 [--synth-data data/synth] [--images a.png ...] \
        [--out docs/checks/blip2-stage2-generation.txt]

Checks, reusing tools/check_export.py's report and helpers:
- loading: `Blip2ForConditionalGeneration.from_pretrained(..., output_loading_info=True)`
  reports no missing, unexpected or mismatched keys, and every stored tensor is the loaded one
  bit for bit (OPT's head is tied to its token embeddings, as `save_pretrained` leaves it);
- processor: `AutoProcessor` is a `Blip2Processor` with the config's `num_query_tokens`, its
  `<image>` token is the config's `image_token_index`, and it puts that many placeholders
  before the prompt; AutoTokenizer and the bare tokenizer.json give the same ids;
- outputs, per image: the greedy caption (no prompt) and the greedy answer to each question in
  BLIP-2's prompt "Question: {q} Answer:", as token ids, from `generate(do_sample=False)`
  against `glimpse caption --json` / `glimpse ask --json`; the reference's logits along its
  greedy path give the smallest gap between the best and the second-best token, so a near-tie
  can be told from a real divergence.

Exits 0 only when every check passes. With --out the table is also written to that file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from check_export import (  # noqa: E402
    DEFAULT_PHOTOS,
    REPO,
    Cli,
    Report,
    check_tokenizer,
    load_model,
    run_cli,
    synth_samples,
)
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Blip2ForConditionalGeneration  # noqa: E402

QUESTIONS = [
    "what color is the background?",
    "how many objects are there?",
    "what shape is in the center?",
]


@torch.no_grad()
def greedy(model, inputs: dict, max_new: int) -> tuple[list[int], float]:
    """Greedy new ids and the smallest top-1/top-2 logit gap along them."""
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new,
                         output_scores=True, return_dict_in_generate=True)
    start = inputs["input_ids"].shape[1]
    seq = out.sequences[0, start:].tolist()
    margin = float("inf")
    for scores in out.scores:
        top = scores[0].float().topk(2).values
        margin = min(margin, float(top[0] - top[1]))
    return seq, margin


def check(rep: Report, mdir: Path, images: list[str], cli: Cli, max_new: int) -> None:
    name = mdir.name
    model = load_model(rep, name, Blip2ForConditionalGeneration, mdir)
    if model is None:
        return
    cfg = model.config
    proc = AutoProcessor.from_pretrained(mdir)
    tok = proc.tokenizer
    rep.equal(name, "processor class", type(proc).__name__, "Blip2Processor")
    rep.equal(name, "processor num_query_tokens", proc.num_query_tokens, cfg.num_query_tokens)
    rep.equal(name, "<image> id", tok.convert_tokens_to_ids("<image>"), cfg.image_token_index)
    check_tokenizer(rep, name, mdir, tok, [f"Question: {q} Answer:" for q in QUESTIONS])
    eos = cfg.text_config.eos_token_id
    for image in images:
        tag = Path(image).name
        img = Image.open(image).convert("RGB")
        enc = proc(images=img, text="", return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        want = [cfg.image_token_index] * cfg.num_query_tokens + [cfg.text_config.bos_token_id]
        rep.equal(name, f"{tag} processor ids", ids, want)
        seq, margin = greedy(model, dict(enc), max_new)
        seq = seq[:seq.index(eos) + 1] if eos in seq else seq
        caption = tok.decode(seq, skip_special_tokens=True).strip()
        run_cli(rep, name, f"caption {tag}",
                lambda image=image: cli("caption", "--model", str(mdir), "--image", image,
                                        "--max-new-tokens", str(max_new)),
                lambda got, seq=seq, margin=margin, caption=caption: rep.equal(
                    name, f"caption {tag} token_ids", got.get("token_ids", [None])[0], seq,
                    f"; '{caption}', margin {margin:.3f}"))
        for q in QUESTIONS:
            enc = proc(images=img, text=f"Question: {q} Answer:", return_tensors="pt")
            seq, margin = greedy(model, dict(enc), max_new)
            seq = seq[:seq.index(eos) + 1] if eos in seq else seq
            answer = tok.decode(seq, skip_special_tokens=True).strip()
            run_cli(rep, name, f"ask {tag} {q}",
                    lambda image=image, q=q: cli("ask", "--model", str(mdir), "--image", image,
                                                 "--question", q, "--max-new-tokens", str(max_new)),
                    lambda got, seq=seq, margin=margin, answer=answer, q=q: rep.equal(
                        name, f"ask {tag} '{q}' token_ids", got.get("token_ids"), seq,
                        f"; '{answer}', margin {margin:.3f}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glimpse", default=str(REPO / "target/debug/glimpse"))
    ap.add_argument("--model", action="append", required=True, type=Path)
    ap.add_argument("--synth-data", type=Path, default=REPO / "data/synth")
    ap.add_argument("--synth-count", type=int, default=4)
    ap.add_argument("--images", nargs="*", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    torch.manual_seed(0)
    rep = Report(args.atol)
    cli = Cli(args.glimpse, args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        images = list(args.images) if args.images is not None else []
        if args.images is None:
            images += [p for p, _ in synth_samples(args.synth_data, args.synth_count, Path(tmp))]
            images += [str(REPO / p) for p in DEFAULT_PHOTOS[:1]]
        for mdir in args.model:
            check(rep, mdir, images, cli, args.max_new_tokens)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ok = rep.print()
    text = buf.getvalue()
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
