"""Prove that a LLaVA model written by `glimpse export` (a `llava_stage1` or `llava_stage2`
run) loads in the reference (transformers on PyTorch) and gives the same outputs as Glimpse.

Usage:
    tools/.venv/bin/python tools/check_llava_export.py --glimpse target/release/glimpse \
        --model models/llava-synth [--images DIR] [--record tools/fixtures/llava_synth_check.json]

Checks, for the model directory:

- loading: `LlavaForConditionalGeneration.from_pretrained(..., output_loading_info=True)`
  reports no missing, unexpected or mismatched keys, and every tensor in model.safetensors is
  the loaded parameter bit for bit; `AutoProcessor` loads (chat template, `<image>` token,
  image processor);
- prompt: the processor's chat template and tokenizer give the ids that Glimpse's processor
  gives (`glimpse ask --json --show-prompt-ids` is not needed: the generated ids below start
  from the same prompt only if these agree, and the bos/`<image>`/eos ids are checked here);
- logits: the reference's logits at every position of the prompt for each image, written to
  the record, and the arg-max of the last position against Glimpse's first generated id;
- generation, per image: `glimpse ask` (one question), `glimpse caption` (the caption
  instruction) and `glimpse chat` (two turns) against greedy `generate` of the reference:
  token ids must be identical.

Images: every PNG under --images (default: the first 6 images of data/synth/val written out
by this script into a temporary directory, or examples/images). Prints a table; writes the
reference's ids and logit summaries to --record; exits 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

QUESTIONS = ["what color is the background?", "how many objects are there?"]
CAPTION = "Describe the image in one sentence."
MAX_NEW_TOKENS = 12


def user(text: str, image: bool) -> dict:
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


def synth_images(data: Path, out: Path, n: int) -> list[str]:
    paths = []
    for shard in sorted(data.glob("*.tar")):
        with tarfile.open(shard) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    p = out / m.name
                    p.write_bytes(t.extractfile(m).read())
                    paths.append(str(p))
                    if len(paths) >= n:
                        return paths
    return paths


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, check: str, result: str, ok: bool) -> None:
        self.rows.append((check, result, ok))

    def print(self) -> bool:
        w = max(len(r[0]) for r in self.rows)
        for check, result, ok in self.rows:
            print(f"{'ok ' if ok else 'BAD'} {check.ljust(w)}  {result}")
        bad = sum(not r[2] for r in self.rows)
        print(f"{len(self.rows) - bad}/{len(self.rows)} checks pass")
        return bad == 0


def glimpse(binary: str, *args: str) -> dict:
    done = subprocess.run([binary, *args, "--json"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"glimpse {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout)


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glimpse", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images")
    ap.add_argument("--data", default="data/synth/val")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--record")
    a = ap.parse_args()
    mdir = Path(a.model)
    rep = Report()

    model, info = LlavaForConditionalGeneration.from_pretrained(mdir, output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    rep.add("loading info", "clean" if not problems else str(problems)[:200], not problems)
    stored = load_file(mdir / "model.safetensors")
    sd = model.state_dict()
    # The reference names its parameters `model.*`/`lm_head.*` in memory; compare by value
    # through the key conversion it applied on load.
    flat = {k: v for k, v in sd.items()}
    names = {
        "vision_tower.vision_model.": "model.vision_tower.vision_model.",
        "multi_modal_projector.": "model.multi_modal_projector.",
        "language_model.model.": "model.language_model.",
        "language_model.lm_head.": "lm_head.",
    }

    def mem_name(k: str) -> str:
        for src, dst in names.items():
            if k.startswith(src):
                return dst + k[len(src):]
        return k

    def loaded(k: str):
        # transformers 5.24 keeps some tower parts under `model.vision_tower.*` without
        # `vision_model.`; look under both.
        n = mem_name(k)
        return flat.get(n, flat.get(n.replace("vision_tower.vision_model.", "vision_tower.")))

    bad = [k for k, t in stored.items() if loaded(k) is None or not torch.equal(loaded(k), t)]
    rep.add("weights bit for bit", f"{len(stored)} tensors" if not bad else f"differ: {bad[:3]}", not bad)
    processor = AutoProcessor.from_pretrained(mdir)
    tok = processor.tokenizer
    cfg = model.config
    rep.add("<image> id", f"{tok.convert_tokens_to_ids('<image>')} vs config {cfg.image_token_index}",
            tok.convert_tokens_to_ids("<image>") == cfg.image_token_index)
    eos, pad = cfg.text_config.eos_token_id, cfg.text_config.pad_token_id

    tmp = tempfile.TemporaryDirectory()
    if a.images:
        images = sorted(str(p) for p in Path(a.images).glob("*.png"))
    else:
        images = synth_images(Path(a.data), Path(tmp.name), a.count)
    record = {"model": str(mdir), "images": [Path(p).name for p in images], "results": []}

    def generate(photo: str, conversation: list[dict]):
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        enc = processor(images=Image.open(photo).convert("RGB"), text=prompt, return_tensors="pt")
        ids = enc["input_ids"]
        logits = model(**enc).logits[0]
        seq = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                             eos_token_id=eos, pad_token_id=pad)[0].tolist()
        new = seq[ids.shape[1]:]
        text = tok.decode([t for t in new if t != eos], skip_special_tokens=True)
        top2 = logits[-1].topk(2).values
        return ids[0].tolist(), new, text, logits, float(top2[0] - top2[1])

    def compare(check: str, got, want: list[int], gap: float) -> None:
        ok = got == want
        rep.add(check, "equal" if ok else f"glimpse {got} vs reference {want} (top-2 gap {gap:.3g})", ok)

    for i, photo in enumerate(images):
        row = {"image": Path(photo).name}
        for qi, q in enumerate(QUESTIONS):
            prompt_ids, new, text, logits, gap = generate(photo, [user(q, True)])
            out = glimpse(a.glimpse, "ask", "--model", str(mdir), "--image", photo, "--question", q,
                          "--max-new-tokens", str(MAX_NEW_TOKENS))
            compare(f"img{i} ask q{qi} ids", out.get("token_ids"), new, gap)
            rep.add(f"img{i} ask q{qi} answer", f"{out.get('answer')!r}", out.get("answer") == text)
            row[f"ask{qi}"] = {"question": q, "prompt_len": len(prompt_ids), "ids": new, "answer": text,
                              "last_logits_top5": logits[-1].topk(5).indices.tolist(),
                              "logits_mean": float(logits.mean()), "logits_std": float(logits.std())}
        _, new, text, _, gap = generate(photo, [user(CAPTION, True)])
        out = glimpse(a.glimpse, "caption", "--model", str(mdir), "--image", photo,
                      "--max-new-tokens", str(MAX_NEW_TOKENS))
        got = (out.get("token_ids") or [None])[0]
        compare(f"img{i} caption ids", got, new, gap)
        row["caption"] = {"ids": new, "text": text}
        conv = [user(QUESTIONS[0], True)]
        _, ids1, ans1, _, g1 = generate(photo, conv)
        conv += [{"role": "assistant", "content": [{"type": "text", "text": ans1}]}, user(QUESTIONS[1], False)]
        _, ids2, ans2, _, g2 = generate(photo, conv)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(QUESTIONS, f)
        out = glimpse(a.glimpse, "chat", "--model", str(mdir), "--image", photo, "--turns", f.name,
                      "--max-new-tokens", str(MAX_NEW_TOKENS))
        os.unlink(f.name)
        turns = out.get("turns") or [{}, {}]
        compare(f"img{i} chat turn 1 ids", turns[0].get("token_ids"), ids1, g1)
        compare(f"img{i} chat turn 2 ids", turns[1].get("token_ids") if len(turns) > 1 else None, ids2, g2)
        row["chat"] = [{"ids": ids1, "answer": ans1}, {"ids": ids2, "answer": ans2}]
        record["results"].append(row)

    ok = rep.print()
    if a.record:
        record["all_pass"] = ok
        Path(a.record).write_text(json.dumps(record, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
