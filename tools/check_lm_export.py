"""Prove that a text-only language model written by `glimpse export` (an `lm` run:
`OPTForCausalLM` or `LlamaForCausalLM`) gives the same outputs in the reference
(transformers on PyTorch) as in Glimpse.

Usage:
    tools/.venv/bin/python tools/check_lm_export.py --glimpse target/debug/glimpse \
        --model runs/export/opt-lm-synth [--model runs/export/llama-lm-synth ...] [--prompt "a red" ...]

For each model directory the script checks:

- loading: `AutoModelForCausalLM.from_pretrained(..., output_loading_info=True)` reports no
  missing, unexpected or mismatched keys, the class is the one config.json names, and every
  tensor in model.safetensors is the loaded parameter bit for bit (a reference parameter absent
  from the file must be tied to one that is present: OPT's head is its token embeddings);
- configuration: bos/eos/pad ids of config.json and generation_config.json against the
  tokenizer's [CLS]/[SEP]/[PAD], vocabulary size against the tokenizer and the embedding;
- tokenizer: AutoTokenizer and the bare tokenizer.json that Glimpse reads give the same ids,
  and Glimpse's prompt ids are bos + those ids;
- outputs, per prompt: the logits of every prompt position (`glimpse generate --logits`)
  against the reference's forward, and the greedy continuation's token ids against
  `generate(do_sample=False)`; the smallest gap between the best and second-best logit on the
  reference's greedy path is shown, so a near-tie can be told from a real divergence.

Floats pass when |glimpse - reference| <= atol * max(1, |reference|) (atol 1e-4 by default);
ids must be identical. Prints a table; exits 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DEFAULT_PROMPTS = [
    "question: what color is the circle? answer:",
    "USER: describe the picture. ASSISTANT:",
    "USER: how many squares are there? ASSISTANT: 2 USER: what color is the background? ASSISTANT:",
    "a large red",
    "two small blue triangles",
]


class Report:
    def __init__(self, atol: float):
        self.atol = atol
        self.rows: list[tuple[str, str, str, bool | None]] = []

    def add(self, model: str, check: str, result: str, ok: bool | None) -> None:
        self.rows.append((model, check, result, ok))

    def floats(self, model: str, check: str, got: torch.Tensor, want: torch.Tensor) -> None:
        if got.shape != want.shape:
            self.add(model, check, f"shape {tuple(got.shape)} vs {tuple(want.shape)}", False)
            return
        diff = (got - want).abs()
        bound = self.atol * want.abs().clamp(min=1.0)
        worst = (diff / want.abs().clamp(min=1.0)).max().item()
        self.add(model, check, f"max |diff| {diff.max().item():.2e} (rel {worst:.2e})", bool((diff <= bound).all()))

    def equal(self, model: str, check: str, got, want, extra: str = "") -> None:
        ok = got == want
        text = "equal" if ok else f"glimpse {got} vs reference {want}"
        self.add(model, check, text + (f"; {extra}" if extra else ""), ok)

    def print(self) -> bool:
        widths = [max(len(r[i]) for r in self.rows) for i in range(2)]
        ok = True
        for model, check, result, good in self.rows:
            mark = {True: "ok", False: "FAIL", None: "note"}[good]
            ok &= good is not False
            print(f"{mark:<4}  {model:<{widths[0]}}  {check:<{widths[1]}}  {result}")
        print("all checks passed" if ok else "SOME CHECKS FAILED")
        return ok


def glimpse_generate(binary: str, model: Path, prompt: str, max_new: int) -> dict:
    cmd = [binary, "generate", "--model", str(model), "--prompt", prompt, "--max-new-tokens", str(max_new), "--json", "--logits"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"exit {out.returncode}")
    return json.loads(out.stdout)


def greedy_margin(model, ids: list[int]) -> float:
    """Smallest best-minus-second logit along a teacher-forced path."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    top = logits.topk(2, dim=-1).values
    return (top[:, 0] - top[:, 1]).min().item()


def check_dir(rep: Report, mdir: Path, args) -> None:
    name = mdir.name
    cfg = json.loads((mdir / "config.json").read_text())
    gen_cfg = json.loads((mdir / "generation_config.json").read_text())
    model, info = AutoModelForCausalLM.from_pretrained(mdir, output_loading_info=True, attn_implementation="eager")
    model.eval()
    cls = type(model).__name__
    rep.equal(name, "class", cls, cfg["architectures"][0])
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    rep.add(name, "loading info", "clean" if not problems else str(problems), not problems)

    stored = load_file(mdir / "model.safetensors")
    params = dict(model.named_parameters(remove_duplicate=False))
    bad = [k for k, t in stored.items() if k not in params or not torch.equal(params[k].detach(), t)]
    ptrs = {t.data_ptr() for k, t in params.items() if k in stored}
    untied = [k for k, p in params.items() if k not in stored and p.data_ptr() not in ptrs]
    rep.add(name, "weights bit for bit", f"{len(stored)} tensors" if not bad else f"differ: {bad[:3]}", not bad)
    rep.add(name, "absent tensors are tied", "yes" if not untied else f"untied: {untied[:3]}", not untied)

    tok = AutoTokenizer.from_pretrained(mdir)
    bare = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    vocab = tok.get_vocab()
    for key, token in (("bos_token_id", "[CLS]"), ("eos_token_id", "[SEP]"), ("pad_token_id", "[PAD]")):
        rep.equal(name, f"config {key}", cfg.get(key), vocab.get(token))
        rep.equal(name, f"generation_config {key}", gen_cfg.get(key), vocab.get(token))
    emb = model.get_input_embeddings().weight.shape[0]
    rep.equal(name, "vocab size", [cfg["vocab_size"], emb], [len(vocab), len(vocab)])

    prompts = args.prompt or DEFAULT_PROMPTS
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        bare_ids = bare.encode(prompt, add_special_tokens=False).ids
        rep.equal(name, f"p{i} tokenizer", bare_ids, ids)
        try:
            out = glimpse_generate(args.glimpse, mdir, prompt, args.max_new_tokens)
        except Exception as e:  # noqa: BLE001 - reported as a failed row
            rep.add(name, f"p{i} glimpse generate", str(e), False)
            continue
        want_ids = [cfg["bos_token_id"]] + ids
        rep.equal(name, f"p{i} prompt ids", out["prompt_ids"], want_ids)
        with torch.no_grad():
            ref_logits = model(torch.tensor([want_ids])).logits[0]
        rep.floats(name, f"p{i} logits [{len(want_ids)} x {ref_logits.shape[1]}]", torch.tensor(out["logits"]), ref_logits)
        with torch.no_grad():
            seq = model.generate(
                torch.tensor([want_ids]),
                attention_mask=torch.ones(1, len(want_ids), dtype=torch.long),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=cfg["eos_token_id"],
                pad_token_id=cfg["pad_token_id"],
            )[0].tolist()
        new = seq[len(want_ids):]
        if cfg["eos_token_id"] in new:
            new = new[: new.index(cfg["eos_token_id"]) + 1]
        margin = greedy_margin(model, want_ids + new)
        rep.equal(name, f"p{i} greedy ids", out["ids"], new, f"min margin {margin:.3f}")
        rep.add(name, f"p{i} text", repr(prompt + " → " + tok.decode(new, skip_special_tokens=True)), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glimpse", required=True, help="the glimpse binary")
    ap.add_argument("--model", action="append", required=True, type=Path, help="an exported lm directory (repeatable)")
    ap.add_argument("--prompt", action="append", help="a prompt to check (repeatable; default: a few of the world's)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()
    rep = Report(args.atol)
    for mdir in args.model:
        if not (mdir / "config.json").is_file():
            print(f"{mdir}: no config.json (not a model directory)", file=sys.stderr)
            return 2
        check_dir(rep, mdir, args)
    return 0 if rep.print() else 1


if __name__ == "__main__":
    sys.exit(main())
