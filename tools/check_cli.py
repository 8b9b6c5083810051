"""Run the Glimpse CLI on every model directory under --models and compare its --json
output with the reference (transformers on PyTorch) computed here on the same inputs.

Usage:
    tools/.venv/bin/python tools/check_cli.py --models tools/fixtures --glimpse target/release/glimpse
    tools/.venv/bin/python tools/check_cli.py --models tools/out/alt --glimpse target/release/glimpse

Inputs (images, texts, questions) come from each directory's reference.json when present
(as written by tools/fixtures/make_fixtures.py), otherwise from the defaults below. Prints a
table of max abs differences / id equality; exits 1 on any mismatch or CLI failure.
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
import torch.nn.functional as F  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    CLIPModel,
    LlavaForConditionalGeneration,
)
from transformers.image_utils import load_image  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

transformers_logging.disable_progress_bar()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = ["examples/images/cat.png", "examples/images/coffee.png", "examples/images/astronaut.png"]
DEFAULT_TEXTS = ["a photo of a cat", "a cup of coffee on a table", "an astronaut", "a rocket launching into the blue sky"]
DEFAULT_QUESTIONS = ["what is in the picture?", "what color is the sky?"]
DEFAULT_LABELS = ["cat", "coffee", "astronaut", "rocket"]
DEFAULT_TEMPLATE = "a photo of a {}."
CAPTION_PROMPT = "a picture of"
BLIP2_CAPTION_PROMPT = "a photo of"
BLIP2_VQA_PROMPT = "Question: {} Answer:"
MAX_NEW_TOKENS = 12
BEAMS = 3

CLASSES = {
    "CLIPModel": CLIPModel,
    "BlipForConditionalGeneration": BlipForConditionalGeneration,
    "BlipForImageTextRetrieval": BlipForImageTextRetrieval,
    "BlipForQuestionAnswering": BlipForQuestionAnswering,
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
}


class Report:
    def __init__(self, atol: float):
        self.atol = atol
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def floats(self, model: str, command: str, key: str, got, want) -> None:
        try:
            got_t = torch.tensor(got, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            self.rows.append((model, command, key, f"not a float array ({err})", False))
            return
        want_t = want.detach().to(torch.float64)
        if got_t.shape != want_t.shape:
            self.rows.append((model, command, key, f"shape {tuple(got_t.shape)} != {tuple(want_t.shape)}", False))
            return
        diff = (got_t - want_t).abs().max().item() if want_t.numel() else 0.0
        self.rows.append((model, command, key, f"max abs {diff:.2e}", diff <= self.atol))

    def equal(self, model: str, command: str, key: str, got, want, hint: str = "") -> None:
        ok = got == want
        detail = "identical" if ok else f"got {short(got)} want {short(want)}{hint}"
        self.rows.append((model, command, key, detail, ok))

    def failed(self, model: str, command: str, message: str) -> None:
        self.rows.append((model, command, "-", message, False))

    def print(self) -> bool:
        widths = [max(len(r[i]) for r in self.rows + [("model", "command", "check", "result", True)])
                  for i in range(4)]
        header = ("model", "command", "check", "result")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  ok")
        for row in self.rows:
            cells = [c.ljust(w) for c, w in zip(row[:4], widths)]
            print("  ".join(cells) + ("  ok" if row[4] else "  MISMATCH"))
        bad = sum(not r[4] for r in self.rows)
        print(f"\n{len(self.rows) - bad} of {len(self.rows)} checks passed (atol {self.atol:g})")
        return bad == 0


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Cli:
    def __init__(self, binary: str, timeout: float):
        self.binary = binary
        self.timeout = timeout

    def __call__(self, *args: str) -> dict:
        cmd = [self.binary, *args, "--json"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CliError(f"timed out after {self.timeout:g}s: {' '.join(cmd)}")
        if done.returncode != 0:
            raise CliError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as err:
            raise CliError(f"stdout is not JSON ({err}): {done.stdout[:200]!r}")


class CliError(Exception):
    pass


def inputs_for(model_dir: Path) -> dict:
    ref_path = model_dir / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.is_file() else {}
    files = ref.get("image_files", {})
    photos = [files[s] for s in ref.get("photos", [])] or DEFAULT_PHOTOS
    classify = ref.get("classify", {})
    return {
        "photos": [str(REPO / p) for p in photos],
        "texts": ref.get("texts", DEFAULT_TEXTS),
        "questions": ref.get("questions", DEFAULT_QUESTIONS),
        "labels": classify.get("labels", DEFAULT_LABELS),
        "template": classify.get("template", DEFAULT_TEMPLATE),
    }


def pixels(processor, path: str) -> torch.Tensor:
    return processor(images=[load_image(path)], return_tensors="pt")["pixel_values"].float()


@torch.no_grad()
def check_clip(name, model, tok, proc, inp, cli, rep):
    photos, texts = inp["photos"], inp["texts"]
    pv = torch.cat([pixels(proc, p) for p in photos])
    enc = tok(texts, padding=True, return_tensors="pt")
    image_embeds = model.get_image_features(pixel_values=pv).pooler_output
    text_embeds = model.get_text_features(**enc).pooler_output
    run(rep, name, "embed", lambda: cli("embed", "--model", str(model.dir), *pairs("--image", photos),
                                         *pairs("--text", texts)),
        lambda out: (rep.floats(name, "embed", "image_embeds", out.get("image_embeds"), image_embeds),
                     rep.floats(name, "embed", "text_embeds", out.get("text_embeds"), text_embeds)))
    itc = F.normalize(image_embeds[:1], dim=-1) @ F.normalize(text_embeds, dim=-1).T
    run(rep, name, "match", lambda: cli("match", "--model", str(model.dir), "--image", photos[0],
                                         *pairs("--text", texts)),
        lambda out: (rep.floats(name, "match", "itc", out.get("itc"), itc[0]),
                     rep.equal(name, "match", "itm absent/null", out.get("itm"), None)))
    labels, template = inp["labels"], inp["template"]
    penc = tok([template.format(label) for label in labels], padding=True, return_tensors="pt")
    label_embeds = model.get_text_features(**penc).pooler_output
    cos = F.normalize(image_embeds[:1], dim=-1) @ F.normalize(label_embeds, dim=-1).T
    probs = (model.logit_scale.exp() * cos).softmax(dim=-1)[0]
    run(rep, name, "classify", lambda: cli("classify", "--model", str(model.dir), "--image", photos[0],
                                            "--labels", ",".join(labels), "--template", template),
        lambda out: (rep.equal(name, "classify", "labels", out.get("labels"), labels),
                     rep.floats(name, "classify", "probs", out.get("probs"), probs)))


@torch.no_grad()
def check_blip_itm(name, model, tok, proc, inp, cli, rep):
    photos, texts = inp["photos"], inp["texts"]
    pv = torch.cat([pixels(proc, p) for p in photos])
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    vision = model.vision_model(pixel_values=pv).last_hidden_state
    image_embeds = model.vision_proj(vision[:, 0])
    text_cls = model.text_encoder(**enc).last_hidden_state[:, 0]
    text_embeds = model.text_proj(text_cls)
    run(rep, name, "embed", lambda: cli("embed", "--model", str(model.dir), *pairs("--image", photos),
                                         *pairs("--text", texts)),
        lambda out: (rep.floats(name, "embed", "image_embeds", out.get("image_embeds"), image_embeds),
                     rep.floats(name, "embed", "text_embeds", out.get("text_embeds"), text_embeds)))
    itc = model(**enc, pixel_values=pv[:1], use_itm_head=False).itm_score[0]
    itm = model(**enc, pixel_values=pv[:1].repeat(len(texts), 1, 1, 1), use_itm_head=True).itm_score
    itm = itm.softmax(dim=-1)[:, 1]
    run(rep, name, "match", lambda: cli("match", "--model", str(model.dir), "--image", photos[0],
                                         *pairs("--text", texts)),
        lambda out: (rep.floats(name, "match", "itc", out.get("itc"), itc),
                     rep.floats(name, "match", "itm", out.get("itm"), itm)))


@torch.no_grad()
def check_blip_caption(name, model, tok, proc, inp, cli, rep):
    photos = inp["photos"]
    pv = [pixels(proc, p) for p in photos]
    sep = model.config.text_config.sep_token_id
    hint = f" (generated ids include the eos id {sep} when generation stops there)"

    def expect(**kw):
        ids, texts = [], []
        for x in pv:
            seq = model.generate(pixel_values=x, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kw)[0].tolist()
            start = 1 if "input_ids" not in kw else kw["input_ids"].shape[1] - 1
            ids.append(seq[start:])
            texts.append((tok.decode(seq[start:], skip_special_tokens=True), tok.decode(seq, skip_special_tokens=True)))
        return ids, texts

    def compare(command, out, ids, texts):
        rep.equal(name, command, "token_ids", out.get("token_ids"), ids, hint)
        got = out.get("captions")
        ok = isinstance(got, list) and len(got) == len(texts) and all(g in t for g, t in zip(got, texts))
        want = [t[0] for t in texts]
        rep.equal(name, command, "captions", got if not ok else want, want)

    base = ["caption", "--model", str(model.dir), *pairs("--image", photos), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    ids, texts = expect(num_beams=1)
    run(rep, name, "caption greedy", lambda: cli(*base), lambda out: compare("caption greedy", out, ids, texts))
    ids, texts = expect(num_beams=BEAMS)
    run(rep, name, f"caption beams={BEAMS}", lambda: cli(*base, "--beams", str(BEAMS)),
        lambda out: compare(f"caption beams={BEAMS}", out, ids, texts))
    prompt_ids = torch.tensor([tok(CAPTION_PROMPT)["input_ids"]])
    ids, texts = expect(num_beams=1, input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids))
    run(rep, name, "caption prompt", lambda: cli(*base, "--prompt", CAPTION_PROMPT),
        lambda out: compare("caption prompt", out, ids, texts))


@torch.no_grad()
def check_blip_vqa(name, model, tok, proc, inp, cli, rep):
    sep = model.config.text_config.sep_token_id
    hint = f" (generated ids include the eos id {sep} when generation stops there)"
    for pi, photo in enumerate(inp["photos"]):
        pv = pixels(proc, photo)
        for qi, question in enumerate(inp["questions"]):
            q = torch.tensor([tok(question)["input_ids"]])
            seq = model.generate(input_ids=q, pixel_values=pv, attention_mask=torch.ones_like(q),
                                 max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)[0].tolist()
            command = f"ask p{pi} q{qi}"
            run(rep, name, command,
                lambda: cli("ask", "--model", str(model.dir), "--image", photo, "--question", question,
                            "--max-new-tokens", str(MAX_NEW_TOKENS)),
                lambda out: (rep.equal(name, command, "token_ids", out.get("token_ids"), seq[1:], hint),
                             rep.equal(name, command, "answer", out.get("answer"),
                                       tok.decode(seq, skip_special_tokens=True))))


def first_difference(got, want) -> str:
    """Where two id lists part, for the mismatch message."""
    if not isinstance(got, list) or not isinstance(want, list):
        return ""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f" (first difference at position {i}: {g} vs {w})"
    if len(got) != len(want):
        return f" (one is a prefix of the other: lengths {len(got)} vs {len(want)})"
    return ""


def equal_ids(rep: Report, name: str, command: str, key: str, got, want, hint: str = "") -> None:
    """Ids (a list, or a list of lists) compared exactly; the message names the first difference."""
    where = ""
    if got != want and isinstance(got, list) and isinstance(want, list):
        if want and isinstance(want[0], list):
            bad = [r for r, (g, w) in enumerate(zip(got, want)) if g != w]
            where = (f" [row {bad[0]}{first_difference(got[bad[0]], want[bad[0]])}]" if bad
                     else f" [{len(got)} rows vs {len(want)}]")
        else:
            where = first_difference(got, want)
    rep.equal(name, command, key, got, want, where + hint)


@torch.no_grad()
def check_blip2_generation(name, model, tok, proc, inp, cli, rep):
    """Blip2ForConditionalGeneration (OPT or T5): caption (greedy, beams, --prompt) and ask."""
    processor = AutoProcessor.from_pretrained(model.dir)
    photos = inp["photos"]
    text_cfg = model.config.text_config
    eos, pad = text_cfg.eos_token_id, text_cfg.pad_token_id
    encdec = model.config.use_decoder_only_language_model is False
    hint = f" (generated ids include the eos id {eos} when generation stops there)"

    def generate(photo, text=None, **kw):
        """New ids of the reference's generate for one image: T5 returns decoder ids after the
        start id, OPT the prompt (image tokens, bos, text) followed by the new ids."""
        enc = processor(images=load_image(photo), text=text, return_tensors="pt")
        pv = enc["pixel_values"].float()
        if text is None:
            args = dict(pixel_values=pv)
            start = 1 if encdec else model.config.num_query_tokens + 1
        else:
            ids = enc["input_ids"]
            args = dict(pixel_values=pv, input_ids=ids, attention_mask=torch.ones_like(ids))
            start = 1 if encdec else ids.shape[1]
        seq = model.generate(**args, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=pad, **kw)[0].tolist()
        new = seq[start:]
        return new, tok.decode(new, skip_special_tokens=True)

    def compare_caption(command, out, results, prefix=""):
        equal_ids(rep, name, command, "token_ids", out.get("token_ids"), [r[0] for r in results], hint)
        want = [f"{prefix}{r[1].lstrip()}" for r in results]
        rep.equal(name, command, "captions", out.get("captions"), want)

    base = ["caption", "--model", str(model.dir), *pairs("--image", photos), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    results = [generate(p, num_beams=1) for p in photos]
    run(rep, name, "caption greedy", lambda: cli(*base),
        lambda out: compare_caption("caption greedy", out, results))
    beams = [generate(p, num_beams=BEAMS) for p in photos]
    run(rep, name, f"caption beams={BEAMS}", lambda: cli(*base, "--beams", str(BEAMS)),
        lambda out: compare_caption(f"caption beams={BEAMS}", out, beams))
    prompted = [generate(p, BLIP2_CAPTION_PROMPT, num_beams=1) for p in photos]
    run(rep, name, "caption prompt", lambda: cli(*base, "--prompt", BLIP2_CAPTION_PROMPT),
        lambda out: compare_caption("caption prompt", out, prompted, BLIP2_CAPTION_PROMPT.rstrip() + " "))
    for pi, photo in enumerate(photos):
        for qi, question in enumerate(inp["questions"]):
            ids, text = generate(photo, BLIP2_VQA_PROMPT.format(question.strip()), num_beams=1)
            command = f"ask p{pi} q{qi}"
            run(rep, name, command,
                lambda: cli("ask", "--model", str(model.dir), "--image", photo, "--question", question,
                            "--max-new-tokens", str(MAX_NEW_TOKENS)),
                lambda out: (equal_ids(rep, name, command, "token_ids", out.get("token_ids"), ids, hint),
                             rep.equal(name, command, "answer", out.get("answer"), text.strip())))


@torch.no_grad()
def check_blip2_itm(name, model, tok, proc, inp, cli, rep):
    """Blip2ForImageTextRetrieval: match gives ITC (max over queries of the cosine) and ITM."""
    texts = inp["texts"]
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for pi, photo in enumerate(inp["photos"]):
        pv = pixels(proc, photo)
        itc = model(input_ids=ids, attention_mask=mask, pixel_values=pv,
                    use_image_text_matching_head=False).logits_per_image[0]
        itm = model(input_ids=ids, attention_mask=mask, pixel_values=pv.repeat(len(texts), 1, 1, 1),
                    use_image_text_matching_head=True).logits_per_image.softmax(dim=-1)[:, 1]
        command = f"match p{pi}"
        run(rep, name, command, lambda: cli("match", "--model", str(model.dir), "--image", photo,
                                             *pairs("--text", texts)),
            lambda out: (rep.floats(name, command, "itc", out.get("itc"), itc),
                         rep.floats(name, command, "itm", out.get("itm"), itm)))


def llava_user(text: str, image: bool) -> dict:
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


@torch.no_grad()
def check_llava(name, model, tok, proc, inp, cli, rep):
    """LlavaForConditionalGeneration: ask (one chat turn) and a scripted two-turn chat."""
    import tempfile

    processor = AutoProcessor.from_pretrained(model.dir)
    text_cfg = model.config.text_config
    eos, pad = text_cfg.eos_token_id, text_cfg.pad_token_id
    hint = f" (generated ids include the eos id {eos} when generation stops there)"
    questions = inp["questions"]

    def generate(photo, conversation):
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        enc = processor(images=load_image(photo), text=prompt, return_tensors="pt")
        ids = enc["input_ids"]
        seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             pixel_values=enc["pixel_values"].float(), max_new_tokens=MAX_NEW_TOKENS,
                             do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)[0].tolist()
        new = seq[ids.shape[1]:]
        reply = [t for t in new if t != eos]  # the reply's text: eos dropped, special tokens skipped
        return new, tok.decode(reply, skip_special_tokens=True)

    for pi, photo in enumerate(inp["photos"]):
        for qi, question in enumerate(questions):
            ids, text = generate(photo, [llava_user(question, True)])
            command = f"ask p{pi} q{qi}"
            run(rep, name, command,
                lambda: cli("ask", "--model", str(model.dir), "--image", photo, "--question", question,
                            "--max-new-tokens", str(MAX_NEW_TOKENS)),
                lambda out: (equal_ids(rep, name, command, "token_ids", out.get("token_ids"), ids, hint),
                             rep.equal(name, command, "answer", out.get("answer"), text)))

    q1, q2 = (questions + DEFAULT_QUESTIONS)[:2]
    with tempfile.TemporaryDirectory() as tmp:
        turns_file = Path(tmp) / "turns.json"
        turns_file.write_text(json.dumps([q1, q2]))
        for pi, photo in enumerate(inp["photos"]):
            conv = [llava_user(q1, True)]
            ids1, answer1 = generate(photo, conv)
            conv += [{"role": "assistant", "content": [{"type": "text", "text": answer1}]}, llava_user(q2, False)]
            ids2, answer2 = generate(photo, conv)
            command = f"chat p{pi}"

            def compare(out, ids1=ids1, ids2=ids2, answers=(answer1, answer2), command=command):
                turns = out.get("turns")
                if not isinstance(turns, list) or len(turns) != 2:
                    rep.failed(name, command, f"expected 2 turns, got {short(turns)}")
                    return
                for t, (turn, want) in enumerate(zip(turns, (ids1, ids2))):
                    equal_ids(rep, name, command, f"turn {t + 1} token_ids", turn.get("token_ids"), want, hint)
                    rep.equal(name, command, f"turn {t + 1} answer", turn.get("answer"), answers[t])

            run(rep, name, command,
                lambda: cli("chat", "--model", str(model.dir), "--image", photo, "--turns", str(turns_file),
                            "--max-new-tokens", str(MAX_NEW_TOKENS)),
                compare)


CHECKS = {
    "CLIPModel": check_clip,
    "BlipForImageTextRetrieval": check_blip_itm,
    "BlipForConditionalGeneration": check_blip_caption,
    "BlipForQuestionAnswering": check_blip_vqa,
    "Blip2ForConditionalGeneration": check_blip2_generation,
    "Blip2ForImageTextRetrieval": check_blip2_itm,
    "LlavaForConditionalGeneration": check_llava,
}


def pairs(flag: str, values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [flag, value]
    return out


def run(rep: Report, name: str, command: str, call, compare) -> None:
    try:
        out = call()
    except CliError as err:
        rep.failed(name, command, str(err))
        return
    if not isinstance(out, dict):
        rep.failed(name, command, f"JSON is not an object: {short(out)}")
        return
    compare(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="directory holding model directories")
    parser.add_argument("--glimpse", required=True, help="path to the glimpse binary")
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed for floats")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per CLI call")
    parser.add_argument("--only", nargs="*", default=None, help="model directory names to check")
    args = parser.parse_args()

    if not Path(args.glimpse).is_file():
        print(f"no glimpse binary at {args.glimpse}", file=sys.stderr)
        return 2
    model_dirs = sorted(p for p in args.models.iterdir() if (p / "config.json").is_file())
    if args.only:
        model_dirs = [p for p in model_dirs if p.name in args.only]
    if not model_dirs:
        print(f"no model directories (with config.json) under {args.models}", file=sys.stderr)
        return 2

    cli = Cli(str(Path(args.glimpse).resolve()), args.timeout)
    rep = Report(args.atol)
    for model_dir in model_dirs:
        config = json.loads((model_dir / "config.json").read_text())
        arch = (config.get("architectures") or ["?"])[0]
        if arch not in CLASSES:
            rep.failed(model_dir.name, "-", f"unsupported architecture {arch}")
            continue
        print(f"checking {model_dir.name} ({arch})", file=sys.stderr)
        model = CLASSES[arch].from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
        model.dir = model_dir.resolve()
        tok = AutoTokenizer.from_pretrained(model_dir)
        proc = AutoImageProcessor.from_pretrained(model_dir)
        CHECKS[arch](model_dir.name, model, tok, proc, inputs_for(model_dir), cli, rep)
    return 0 if rep.print() else 1


if __name__ == "__main__":
    sys.exit(main())
