"""Prove that a model written by `glimpse export` gives the same outputs in the reference
(transformers on PyTorch) as in Glimpse.

Usage:
    tools/.venv/bin/python tools/check_export.py --glimpse target/release/glimpse --model runs/export/clip
    tools/.venv/bin/python tools/check_export.py --glimpse target/release/glimpse --model out/blip \
        [--model DIR ...] [--images a.png b.png ...] [--texts "a red circle" ...]
    tools/.venv/bin/python tools/check_export.py --glimpse target/release/glimpse --make-tiny /tmp/tiny

A --model directory is a `CLIPModel` directory, a `BlipForConditionalGeneration` or
`BlipForImageTextRetrieval` directory, or a BLIP export directory holding `caption/` and
`retrieval/`. For each model the script checks:

- loading: `from_pretrained(..., output_loading_info=True)` reports no missing, unexpected or
  mismatched keys, and every tensor in model.safetensors is the loaded parameter bit for bit
  (reference parameters absent from the file must be tied to one that is present);
- configuration: special-token ids of config.json / generation_config.json against the
  tokenizer, vocabulary size against the tokenizer and the embedding, position table against
  the tokenizer's model_max_length;
- tokenizer: AutoTokenizer (tokenizer_config.json) and the bare tokenizer.json that Glimpse
  reads give the same ids;
- outputs: CLIP `embed` (image/text embeddings), `classify` (probabilities), `match` (ITC);
  BLIP caption: greedy, beam-search and prompted `caption` token ids and captions against
  `generate`; BLIP retrieval: `embed` and `match` (ITC cosine and ITM probability).

Floats pass when |glimpse - reference| <= atol * max(1, |reference|) element by element
(atol 1e-4 by default). Ids and strings must be identical. For greedy captions the table also
gives the smallest gap between the best and second-best logit along the reference's path
(teacher-forced), so that a near-tie can be told from a real divergence.

--make-tiny OUT builds a run end to end for testing this script itself: `glimpse data synth`
into OUT/data, tiny copies of recipes/clip-synth.toml and recipes/blip-synth.toml in OUT
(max_steps instead of epochs, batch 16, queue 64, paths under OUT), `glimpse train` and
`glimpse export` for both (a run whose checkpoint already exists is reused; delete OUT to
rebuild), then checks OUT/export/clip and OUT/export/blip (with images from OUT/data/test).

Prints a table; exits 0 only when every check passes (rows marked `note` are informative).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    CLIPModel,
    GenerationConfig,
)
from transformers.image_utils import load_image  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

transformers_logging.disable_progress_bar()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = ["examples/images/cat.png", "examples/images/coffee.png"]
SYNTH_IMAGES = 3
EXTRA_TEXTS = ["a photo of a cat", "Two BIG red squares, left of a blue circle!", "a zebra"]
DEFAULT_LABELS = ["red circle", "blue square", "green triangle", "yellow star"]
TEMPLATE = "a photo of a {}."
CAPTION_PROMPT_WORDS = 2
BEAMS = 3
CLASSES = {
    "CLIPModel": CLIPModel,
    "BlipForConditionalGeneration": BlipForConditionalGeneration,
    "BlipForImageTextRetrieval": BlipForImageTextRetrieval,
}


# ---------------------------------------------------------------- report


class Report:
    def __init__(self, atol: float):
        self.atol = atol
        self.rows: list[tuple[str, str, str, str]] = []  # model, check, result, status

    def add(self, model: str, check: str, result: str, ok: bool | None) -> None:
        status = "note" if ok is None else ("ok" if ok else "FAIL")
        self.rows.append((model, check, " | ".join(result.split("\n")), status))

    def floats(self, model: str, check: str, got, want: torch.Tensor) -> None:
        try:
            got_t = torch.tensor(got, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            self.add(model, check, f"not a float array ({err}): {short(got)}", False)
            return
        want_t = want.detach().to(torch.float64)
        if got_t.shape != want_t.shape:
            self.add(model, check, f"shape {tuple(got_t.shape)} != reference {tuple(want_t.shape)}", False)
            return
        if want_t.numel() == 0:
            self.add(model, check, "empty", True)
            return
        diff = (got_t - want_t).abs()
        rel = (diff / want_t.abs().clamp(min=1.0)).max().item()
        self.add(model, check, f"max abs {diff.max().item():.2e} (scaled {rel:.2e}, |ref| <= "
                 f"{want_t.abs().max().item():.3g})", rel <= self.atol)

    def equal(self, model: str, check: str, got, want, extra: str = "", names=("glimpse", "reference")) -> None:
        ok = got == want
        detail = ("identical" if ok else
                  f"{names[0]} {short(got)} {names[1]} {short(want)}{first_difference(got, want)}")
        self.add(model, check, detail + extra, ok)

    def print(self) -> bool:
        header = ("model", "check", "result", "status")
        widths = [min(60, max(len(r[i]) for r in self.rows + [header])) for i in range(3)]
        print("  ".join(h.ljust(w) for h, w in zip(header[:3], widths)) + "  status")
        for row in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        bad = sum(r[3] == "FAIL" for r in self.rows)
        checks = sum(r[3] != "note" for r in self.rows)
        print(f"\n{checks - bad} of {checks} checks passed (atol {self.atol:g}, scaled by max(1, |reference|))")
        return bad == 0 and checks > 0


def short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def first_difference(got, want) -> str:
    if not isinstance(got, list) or not isinstance(want, list) or got == want:
        return ""
    if len(got) == len(want) and got and isinstance(want[0], list):
        rows = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        return f" [row {rows[0]}{first_difference(got[rows[0]], want[rows[0]])}]" if rows else ""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f" (first difference at {i}: {g!r} vs {w!r})"
    return f" (lengths {len(got)} vs {len(want)})"


# ---------------------------------------------------------------- glimpse CLI


class CliError(Exception):
    pass


class Cli:
    def __init__(self, binary: str, timeout: float):
        self.binary = binary
        self.timeout = timeout
        self.last_error = ""

    def __call__(self, *args: str, json_out: bool = True) -> dict | str:
        cmd = [self.binary, *args] + (["--json"] if json_out else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            raise CliError(f"timed out after {self.timeout:g}s: {' '.join(cmd)}")
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.lower().startswith("error")]
            message = f"exit {done.returncode}: {(chr(10).join(errors) or done.stderr.strip())[-400:]}"
            repeated = message == self.last_error
            self.last_error = message
            raise CliError("the same error as above" if repeated else message)
        if not json_out:
            return done.stdout
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as err:
            raise CliError(f"stdout is not JSON ({err}): {done.stdout[:200]!r}")


def run_cli(rep: Report, name: str, check: str, call, compare) -> None:
    try:
        out = call()
    except CliError as err:
        rep.add(name, check, f"glimpse failed: {err}", False)
        return
    compare(out)


def pairs(flag: str, values) -> list[str]:
    return [x for v in values for x in (flag, v)]


# ---------------------------------------------------------------- inputs


def synth_samples(data: Path | None, count: int, out_dir: Path) -> list[tuple[str, dict]]:
    """The first `count` images of the synthetic set under `data` (test, then val, then train
    split), written as PNGs into out_dir, with their records."""
    if data is None or not data.is_dir():
        return []
    found: list[tuple[str, dict]] = []
    for split in ("test", "val", "train"):
        for shard in sorted((data / split).glob("*.tar")):
            with tarfile.open(shard) as tar:
                members = {m.name: m for m in tar.getmembers()}
                for name in sorted(members):
                    if not name.endswith(".png") or len(found) >= count:
                        continue
                    key = name[:-4]
                    record = {}
                    if f"{key}.json" in members:
                        record = json.loads(tar.extractfile(members[f"{key}.json"]).read())
                    path = out_dir / f"synth-{split}-{Path(key).name}.png"
                    path.write_bytes(tar.extractfile(members[name]).read())
                    found.append((str(path), record))
            if len(found) >= count:
                return found
    return found


def default_inputs(args, tmp: Path) -> dict:
    synth = synth_samples(args.synth_data, SYNTH_IMAGES, tmp)
    images = args.images or [str(REPO / p) for p in DEFAULT_PHOTOS] + [p for p, _ in synth]
    texts = args.texts
    if not texts:
        texts = []
        for _, rec in synth:
            caps = [rec.get("caption")] + list(rec.get("captions", []))[1:2]
            texts += [c for c in caps if c and c not in texts]
        texts = texts[:4] + EXTRA_TEXTS
    labels = args.labels.split(",") if args.labels else []
    if not labels:
        for _, rec in synth:
            for obj in rec.get("objects", []):
                label = f"{obj.get('color')} {obj.get('shape')}"
                if label not in labels:
                    labels.append(label)
        labels = (labels + [x for x in DEFAULT_LABELS if x not in labels])[:4]
    prompt = args.prompt
    if prompt is None:
        caption = next((rec.get("caption") for _, rec in synth if rec.get("caption")), "there is a red circle")
        prompt = " ".join(caption.split()[:CAPTION_PROMPT_WORDS])
    return {"images": images, "texts": texts, "labels": labels, "prompt": prompt}


def pixels(processor, path: str) -> torch.Tensor:
    return processor(images=[load_image(path)], return_tensors="pt")["pixel_values"].float()


def features(out) -> torch.Tensor:
    """get_*_features returns a tensor in some versions, an output with pooler_output in others."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ---------------------------------------------------------------- model-independent checks


def load_model(rep: Report, name: str, cls, mdir: Path):
    try:
        model, info = cls.from_pretrained(mdir, attn_implementation="eager", output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - any loading failure is a failed check
        rep.add(name, "from_pretrained", f"{type(err).__name__}: {str(err)[:300]}", False)
        return None
    model.eval()
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        values = info.get(key) or []
        if values:
            problems.append(f"{key}: {sorted(map(str, values))}")
    rep.add(name, "from_pretrained keys", "; ".join(problems) if problems else
            f"no missing/unexpected/mismatched keys ({cls.__name__})", not problems)
    check_weights(rep, name, model, mdir)
    return model


def check_weights(rep: Report, name: str, model, mdir: Path) -> None:
    """Every stored tensor is the loaded parameter bit for bit (this catches a tied or
    re-initialised reference parameter overwriting a stored one); every parameter the file
    lacks shares storage with one it holds (tied weights)."""
    stored = load_file(str(mdir / "model.safetensors"))
    state = model.state_dict()
    differ = [k for k, v in stored.items() if k in state and
              (state[k].shape != v.shape or not torch.equal(state[k].to(v.dtype), v))]
    detail = []
    for k in differ[:5]:
        a, b = state[k].float(), stored[k].float()
        gap = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        detail.append(f"{k} ({gap})")
    rep.add(name, "stored tensors == loaded", f"{len(stored)} tensors identical" if not differ else
            f"{len(differ)} differ: {', '.join(detail)}", not differ)
    ptr_of = {v.data_ptr(): k for k, v in state.items() if k in stored}
    absent = sorted(set(state) - set(stored))
    untied = [k for k in absent if state[k].data_ptr() not in ptr_of]
    if absent:
        tied = [f"{k} = {ptr_of[state[k].data_ptr()]}" for k in absent if k not in untied]
        rep.add(name, "reference-only tensors tied", (f"tied: {'; '.join(tied)}" if not untied else
                f"not in the file and not tied (left at their initial values): {untied}"), not untied)


def check_tokenizer(rep: Report, name: str, mdir: Path, tok, texts: list[str]) -> None:
    bare = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    got = [bare.encode(t).ids for t in texts]
    want = [tok(t)["input_ids"] for t in texts]
    rep.equal(name, "tokenizer.json == AutoTokenizer", got, want, f" ({type(tok).__name__})",
              names=("tokenizer.json", "AutoTokenizer"))
    unk = [t for t, ids in zip(texts, want) if tok.unk_token_id in ids]
    if unk:
        rep.add(name, "tokenizer unknowns", f"[UNK] in {unk}", None)


def check_config_ids(rep: Report, name: str, model, tok, blip: bool, gen: GenerationConfig | None) -> None:
    tc = model.config.text_config
    want = {"pad_token_id": tok.pad_token_id}
    if blip:
        want.update(bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    else:
        # CLIPTextTransformer pools at the first eos_token_id (when it is not 2, the legacy argmax rule).
        want.update(eos_token_id=tok.sep_token_id)
    got = {k: getattr(tc, k, None) for k in want}
    rep.equal(name, "config special ids", got, want, names=("config.json", "tokenizer"))
    if blip and gen is not None:
        want_gen = {"bos_token_id": tc.bos_token_id, "eos_token_id": tc.sep_token_id, "pad_token_id": tc.pad_token_id}
        got_gen = {k: getattr(gen, k, None) for k in want_gen}
        rep.equal(name, "generation_config ids", got_gen, want_gen, names=("generation_config.json", "config.json"))
    if hasattr(model, "text_model"):  # CLIPModel
        emb = model.text_model.embeddings.token_embedding.weight.shape[0]
    elif hasattr(model, "text_encoder"):  # BlipForImageTextRetrieval
        emb = model.text_encoder.embeddings.word_embeddings.weight.shape[0]
    else:  # BlipForConditionalGeneration
        emb = model.text_decoder.bert.embeddings.word_embeddings.weight.shape[0]
    sizes = {"config": tc.vocab_size, "embedding": emb, "tokenizer": len(tok)}
    rep.add(name, "vocab sizes", json.dumps(sizes), len(set(sizes.values())) == 1)
    mml = getattr(tok, "model_max_length", None)
    mpe = tc.max_position_embeddings
    rep.add(name, "positions >= model_max_length", f"max_position_embeddings {mpe}, model_max_length {mml}",
            mml is None or mml <= mpe)
    if not blip and tc.bos_token_id is not None and tok.bos_token_id != tc.bos_token_id:
        rep.add(name, "tokenizer bos vs config bos",
                f"tokenizer bos_token {tok.bos_token!r} ({tok.bos_token_id}) vs text_config.bos_token_id "
                f"{tc.bos_token_id} (unused by CLIPModel)", None)


# ---------------------------------------------------------------- CLIP


@torch.no_grad()
def check_clip(rep, name, mdir, model, tok, proc, inp, cli):
    images, texts = inp["images"], inp["texts"]
    pv = torch.cat([pixels(proc, p) for p in images])
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    image_embeds = features(model.get_image_features(pixel_values=pv))
    text_embeds = features(model.get_text_features(**enc))
    run_cli(rep, name, "embed", lambda: cli("embed", "--model", str(mdir), *pairs("--image", images),
                                             *pairs("--text", texts)),
            lambda out: (rep.floats(name, "embed image_embeds", out.get("image_embeds"), image_embeds),
                         rep.floats(name, "embed text_embeds", out.get("text_embeds"), text_embeds)))
    cos = F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    labels = inp["labels"]
    penc = tok([TEMPLATE.format(label) for label in labels], padding=True, return_tensors="pt",
               return_token_type_ids=False)
    label_embeds = features(model.get_text_features(**penc))
    label_cos = F.normalize(image_embeds, dim=-1) @ F.normalize(label_embeds, dim=-1).T
    probs = (model.logit_scale.exp() * label_cos).softmax(dim=-1)
    rep.add(name, "logit_scale", f"exp(logit_scale) = {model.logit_scale.exp().item():.4f}", None)
    for i, image in enumerate(images):
        tag = Path(image).name
        run_cli(rep, name, f"match {tag} itc", lambda: cli("match", "--model", str(mdir), "--image", image,
                                                           *pairs("--text", texts)),
                lambda out: rep.floats(name, f"match {tag} itc", out.get("itc"), cos[i]))
        run_cli(rep, name, f"classify {tag}",
                lambda: cli("classify", "--model", str(mdir), "--image", image, "--labels", ",".join(labels),
                            "--template", TEMPLATE),
                lambda out: (rep.equal(name, f"classify {tag} labels", out.get("labels"), labels),
                             rep.floats(name, f"classify {tag} probs", out.get("probs"), probs[i])))


# ---------------------------------------------------------------- BLIP retrieval


@torch.no_grad()
def check_blip_retrieval(rep, name, mdir, model, tok, proc, inp, cli):
    images, texts = inp["images"], inp["texts"]
    pv = torch.cat([pixels(proc, p) for p in images])
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    vision = model.vision_model(pixel_values=pv).last_hidden_state
    image_embeds = model.vision_proj(vision[:, 0])
    text_embeds = model.text_proj(model.text_encoder(**enc).last_hidden_state[:, 0])
    run_cli(rep, name, "embed", lambda: cli("embed", "--model", str(mdir), *pairs("--image", images),
                                             *pairs("--text", texts)),
            lambda out: (rep.floats(name, "embed image_embeds", out.get("image_embeds"), image_embeds),
                         rep.floats(name, "embed text_embeds", out.get("text_embeds"), text_embeds)))
    n = len(texts)
    for i, image in enumerate(images):
        tag = Path(image).name
        one = pv[i:i + 1]
        itc = model(**enc, pixel_values=one, use_itm_head=False).itm_score[0]
        itm = model(**enc, pixel_values=one.repeat(n, 1, 1, 1), use_itm_head=True).itm_score.softmax(dim=-1)[:, 1]
        run_cli(rep, name, f"match {tag}", lambda: cli("match", "--model", str(mdir), "--image", image,
                                                       *pairs("--text", texts)),
                lambda out: (rep.floats(name, f"match {tag} itc", out.get("itc"), itc),
                             rep.floats(name, f"match {tag} itm", out.get("itm"), itm)))


# ---------------------------------------------------------------- BLIP caption


@torch.no_grad()
def greedy_margin(model, pv: torch.Tensor, seq: list[int], start: int) -> float:
    """Teacher-forced logits of the reference's own sequence: the smallest gap between the
    chosen and the runner-up token over the generated positions."""
    ids = torch.tensor([seq])
    logits = model(pixel_values=pv, input_ids=ids).logits[0]
    gaps = []
    for pos in range(start - 1, len(seq) - 1):
        top = logits[pos].topk(2)
        gaps.append((top.values[0] - top.values[1]).item())
    return min(gaps) if gaps else float("inf")


@torch.no_grad()
def check_blip_caption(rep, name, mdir, model, tok, proc, inp, cli, max_new):
    images = inp["images"]
    pv = [pixels(proc, p) for p in images]

    def reference(num_beams: int, prompt: str | None = None):
        ids, caps, margins = [], [], []
        for x in pv:
            kw = {}
            start = 1  # generate's output starts with the bos ([DEC]) it was seeded with
            if prompt is not None:
                p = torch.tensor([tok(prompt)["input_ids"]])  # [CLS] prompt [SEP]; generate swaps in bos, drops [SEP]
                kw = dict(input_ids=p, attention_mask=torch.ones_like(p))
                start = p.shape[1] - 1
            seq = model.generate(pixel_values=x, max_new_tokens=max_new, do_sample=False, num_beams=num_beams,
                                 **kw)[0].tolist()
            ids.append(seq[start:])
            caps.append(tok.decode(seq, skip_special_tokens=True))
            if num_beams == 1:
                margins.append(greedy_margin(model, x, seq, start))
        return ids, caps, margins

    base = ["caption", "--model", str(mdir), *pairs("--image", images), "--max-new-tokens", str(max_new)]
    for label, extra, beams, prompt in [("caption greedy", [], 1, None),
                                        (f"caption beams={BEAMS}", ["--beams", str(BEAMS)], BEAMS, None),
                                        (f"caption prompt {inp['prompt']!r}", ["--prompt", inp["prompt"]], 1,
                                         inp["prompt"])]:
        ids, caps, margins = reference(beams, prompt)

        def compare(out, label=label, ids=ids, caps=caps, margins=margins):
            note = f" (smallest greedy logit gap {min(margins):.3g})" if margins else ""
            rep.equal(name, f"{label} token_ids", out.get("token_ids"), ids, note)
            rep.equal(name, f"{label} captions", out.get("captions"), caps)

        run_cli(rep, name, label, lambda extra=extra: cli(*base, *extra), compare)
        if label == "caption greedy":
            rep.add(name, "reference greedy captions", short(caps), None)


# ---------------------------------------------------------------- driver


def model_dirs(path: Path) -> list[Path]:
    if (path / "config.json").is_file():
        return [path]
    subs = [path / s for s in ("caption", "retrieval") if (path / s / "config.json").is_file()]
    if subs:
        return subs
    raise SystemExit(f"{path}: neither a model directory (config.json) nor a BLIP export (caption/, retrieval/)")


def check_dir(rep: Report, mdir: Path, inp: dict, cli: Cli, max_new: int) -> None:
    name = str(mdir)
    try:
        cfg = json.loads((mdir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        rep.add(name, "config.json", str(err), False)
        return
    arch = (cfg.get("architectures") or ["?"])[0]
    cls = CLASSES.get(arch)
    if cls is None:
        rep.add(name, "architecture", f"{arch} is not one this script checks ({', '.join(CLASSES)})", False)
        return
    missing = [f for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
               + (("generation_config.json",) if arch == "BlipForConditionalGeneration" else ())
               if not (mdir / f).is_file()]
    rep.add(name, "files", f"missing {missing}" if missing else "all present", not missing)
    model = load_model(rep, name, cls, mdir)
    if model is None:
        return
    try:
        tok = AutoTokenizer.from_pretrained(mdir)
        proc = AutoImageProcessor.from_pretrained(mdir)
    except Exception as err:  # noqa: BLE001
        rep.add(name, "tokenizer / image processor", f"{type(err).__name__}: {str(err)[:300]}", False)
        return
    rep.add(name, "processors", f"{type(tok).__name__}, {type(proc).__name__}", None)
    gen = None
    if (mdir / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(mdir)
    blip = arch != "CLIPModel"
    check_config_ids(rep, name, model, tok, blip, gen)
    check_tokenizer(rep, name, mdir, tok, inp["texts"] + [TEMPLATE.format(x) for x in inp["labels"]])
    if arch == "CLIPModel":
        check_clip(rep, name, mdir, model, tok, proc, inp, cli)
    elif arch == "BlipForImageTextRetrieval":
        check_blip_retrieval(rep, name, mdir, model, tok, proc, inp, cli)
    else:
        check_blip_caption(rep, name, mdir, model, tok, proc, inp, cli, max_new)


# ---------------------------------------------------------------- --make-tiny


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(recipe: dict) -> str:
    lines = []
    for section, table in recipe.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def tiny_recipe(kind: str, out: Path, steps: int) -> Path:
    recipe = tomllib.loads((REPO / "recipes" / f"{kind}-synth.toml").read_text())
    recipe["model"]["config"] = str((REPO / recipe["model"]["config"]).resolve())
    data = recipe["data"]
    data["train"] = str(out / "data" / "train")
    data["val"] = str(out / "data" / "val")
    data["shuffle_buffer"] = 256
    optim = recipe["optim"]
    optim.pop("epochs", None)
    optim["max_steps"] = steps
    optim["batch_size"] = 16
    optim["warmup_steps"] = min(int(optim.get("warmup_steps", 0)), max(1, steps // 6))
    if kind == "blip":
        recipe.setdefault("loss", {})["queue_size"] = 64
        recipe["loss"]["alpha_warmup_steps"] = min(int(recipe["loss"].get("alpha_warmup_steps", 0)), steps)
    run = recipe["run"]
    run["out"] = str(out / "runs" / kind)
    run["val_every"] = 0
    run["val_samples"] = 16
    run["checkpoint_every"] = steps
    path = out / f"{kind}-tiny.toml"
    path.write_text(f"# Written by tools/check_export.py --make-tiny from recipes/{kind}-synth.toml\n"
                    + dump_toml(recipe))
    return path


def step(cmd: list[str], log: Path) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    print(f"  ({time.time() - t0:.0f}s, log {log})", flush=True)
    if done.returncode != 0:
        sys.stderr.write(log.read_text()[-2000:])
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(cmd)}")


def make_tiny(binary: str, out: Path, count: int, steps: int) -> list[Path]:
    out = out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    step([binary, "data", "synth", "--out", str(out / "data"), "--count", str(count)], out / "logs" / "synth.log")
    exports = []
    for kind in ("clip", "blip"):
        recipe = tiny_recipe(kind, out, steps)
        run_dir = out / "runs" / kind
        if (run_dir / "checkpoints" / "latest").is_file():
            print(f"reusing {run_dir} (delete it to retrain)", flush=True)
        else:
            step([binary, "train", "--recipe", str(recipe), "--json"], out / "logs" / f"train-{kind}.log")
        export = out / "export" / kind
        step([binary, "export", "--run", str(run_dir), "--out", str(export), "--json"],
             out / "logs" / f"export-{kind}.log")
        exports.append(export)
    return exports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glimpse", default=str(REPO / "target" / "release" / "glimpse"))
    ap.add_argument("--model", action="append", type=Path, default=[],
                    help="exported model directory (repeatable): CLIPModel, BLIP caption/retrieval, or a BLIP export")
    ap.add_argument("--images", nargs="+", help="image files (default: two photos from examples/images and "
                                                f"{SYNTH_IMAGES} synthetic images from --synth-data)")
    ap.add_argument("--texts", nargs="+", help="texts (default: captions of the synthetic images and a few others)")
    ap.add_argument("--labels", help="comma-separated labels for classify (default: from the synthetic images)")
    ap.add_argument("--prompt", help="caption prefix for the prompted caption check (default: first words of a "
                                     "synthetic caption)")
    ap.add_argument("--synth-data", type=Path, default=REPO / "data" / "synth",
                    help="synthetic set to draw images from (default data/synth; with --make-tiny OUT/data)")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per glimpse command")
    ap.add_argument("--make-tiny", type=Path, metavar="OUT",
                    help="generate data, train and export a tiny CLIP and BLIP run in OUT, then check them")
    ap.add_argument("--tiny-count", type=int, default=300, help="synthetic samples for --make-tiny")
    ap.add_argument("--tiny-steps", type=int, default=30, help="training updates for --make-tiny")
    args = ap.parse_args()

    binary = str(Path(args.glimpse).resolve())
    models = list(args.model)
    if args.make_tiny:
        models += make_tiny(binary, args.make_tiny, args.tiny_count, args.tiny_steps)
        if args.synth_data == REPO / "data" / "synth":
            args.synth_data = args.make_tiny.resolve() / "data"
    if not models:
        ap.error("give --model DIR (repeatable) or --make-tiny OUT")

    rep = Report(args.atol)
    cli = Cli(binary, args.timeout)
    with tempfile.TemporaryDirectory(prefix="check_export-") as tmp:
        inp = default_inputs(args, Path(tmp))
        jpegs = [Path(p).name for p in inp["images"] if Path(p).suffix.lower() in (".jpg", ".jpeg")]
        if jpegs:
            rep.add("inputs", "JPEG images", f"{jpegs}: Glimpse (the image crate) and PIL (libjpeg-turbo) decode "
                    "JPEG to slightly different pixels, so image outputs on them may differ by ~1e-3 for reasons "
                    "unrelated to the export; PNG inputs isolate the export", None)
        print(f"images: {[Path(p).name for p in inp['images']]}\ntexts: {inp['texts']}\n"
              f"labels: {inp['labels']}  prompt: {inp['prompt']!r}\n", flush=True)
        for path in models:
            for mdir in model_dirs(path.resolve()):
                t0 = time.time()
                check_dir(rep, mdir, inp, cli, args.max_new_tokens)
                print(f"checked {mdir} in {time.time() - t0:.0f}s", flush=True)
    print()
    return 0 if rep.print() else 1


if __name__ == "__main__":
    sys.exit(main())
