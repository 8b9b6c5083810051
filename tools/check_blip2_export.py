"""Prove that a BLIP-2 stage-1 export (`glimpse export` of a `blip2_stage1` run, a
`Blip2ForImageTextRetrieval` directory) loads in the reference (transformers on PyTorch) and
scores as `glimpse match` does.

Usage:
    tools/.venv/bin/python tools/check_blip2_export.py --glimpse target/debug/glimpse \
        --model runs/export/blip2-stage1 [--synth-data data/synth] [--images a.png ...] \
        [--texts "a red circle" ...]

Checks, reusing tools/check_export.py's report and helpers:
- loading: `Blip2ForImageTextRetrieval.from_pretrained(..., output_loading_info=True)` reports no
  missing, unexpected or mismatched keys, and every stored tensor is the loaded one bit for bit;
- tokenizer: AutoTokenizer and the bare tokenizer.json give the same ids;
- outputs, per image against every text: ITC (`use_image_text_matching_head=False`, the best
  query's cosine) and the ITM match probability (`use_image_text_matching_head=True`, softmax of
  the query-averaged logits, class 1) against `glimpse match --json`'s `itc` and `itm`.

With --recall N it also reports (as notes) ITC retrieval recall@1/@5 in both directions over the
first N samples of the synthetic validation split (one caption per image, the `caption` field, as
the training run validates), computed in the reference, for the export and for --baseline (a
BlipForImageTextRetrieval directory, by default the bundled models/blip-synth/retrieval).

Exits 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from check_export import (  # noqa: E402
    DEFAULT_PHOTOS,
    EXTRA_TEXTS,
    REPO,
    Cli,
    Report,
    check_tokenizer,
    load_model,
    pairs,
    pixels,
    run_cli,
    synth_samples,
)
import io  # noqa: E402
import tarfile  # noqa: E402

from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoTokenizer,
    Blip2ForImageTextRetrieval,
    BlipForImageTextRetrieval,
)


@torch.no_grad()
def check(rep: Report, mdir: Path, images: list[str], texts: list[str], cli: Cli) -> None:
    name = mdir.name
    model = load_model(rep, name, Blip2ForImageTextRetrieval, mdir)
    if model is None:
        return
    tok = AutoTokenizer.from_pretrained(mdir)
    proc = AutoImageProcessor.from_pretrained(mdir)
    check_tokenizer(rep, name, mdir, tok, texts)
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    n = len(texts)
    for image in images:
        tag = Path(image).name
        pv = pixels(proc, image)
        itc = model(**enc, pixel_values=pv, use_image_text_matching_head=False).logits_per_image[0]
        out = model(**enc, pixel_values=pv.repeat(n, 1, 1, 1), use_image_text_matching_head=True)
        itm = out.logits_per_image.softmax(dim=-1)[:, 1]
        run_cli(rep, name, f"match {tag}",
                lambda image=image: cli("match", "--model", str(mdir), "--image", image, *pairs("--text", texts)),
                lambda got, tag=tag, itc=itc, itm=itm: (
                    rep.floats(name, f"match {tag} itc", got.get("itc"), itc),
                    rep.floats(name, f"match {tag} itm", got.get("itm"), itm)))


def val_pairs(data: Path, n: int) -> tuple[list[Image.Image], list[str]]:
    """The first n images of data/val in shard and archive order, each with its caption."""
    images, texts = [], []
    for shard in sorted((data / "val").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {}
            for m in tar.getmembers():
                key, _, ext = m.name.rpartition(".")
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for key, parts in files.items():
                if "png" not in parts or "json" not in parts:
                    continue
                rec = json.loads(parts["json"])
                caption = rec.get("caption") or (rec.get("captions") or [None])[0]
                if not caption:
                    continue
                images.append(Image.open(io.BytesIO(parts["png"])).convert("RGB"))
                texts.append(caption)
                if len(images) >= n:
                    return images, texts
    return images, texts


def recalls(sim: torch.Tensor) -> dict:
    """R@1 and R@5 both ways of a square similarity matrix, matches on the diagonal."""
    out = {}
    for name, m in (("i2t", sim), ("t2i", sim.t())):
        rank = (m > m.diag().unsqueeze(1)).sum(dim=1)
        out[f"{name}_r1"] = (rank < 1).float().mean().item()
        out[f"{name}_r5"] = (rank < 5).float().mean().item()
    return out


@torch.no_grad()
def recall_table(rep: Report, export: Path, baseline: Path, data: Path, n: int) -> None:
    images, texts = val_pairs(data, n)
    if not images:
        rep.add("recall", "validation pairs", f"none under {data / 'val'}", False)
        return
    for name, mdir in (("blip2 stage 1", export), ("blip baseline", baseline)):
        tok = AutoTokenizer.from_pretrained(mdir)
        proc = AutoImageProcessor.from_pretrained(mdir)
        enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
        img_feats, txt_feats = [], []
        for i in range(0, len(images), 64):
            pv = proc(images=images[i:i + 64], return_tensors="pt")["pixel_values"].float()
            ids = enc["input_ids"][i:i + 64]
            mask = enc["attention_mask"][i:i + 64]
            if name.startswith("blip2"):
                m = Blip2ForImageTextRetrieval.from_pretrained(mdir, attn_implementation="eager") \
                    if i == 0 else m
                vision = m.vision_model(pixel_values=pv).last_hidden_state
                q = m.qformer(query_embeds=m.query_tokens.expand(len(pv), -1, -1),
                              encoder_hidden_states=vision).last_hidden_state
                img_feats.append(torch.nn.functional.normalize(m.vision_projection(q), dim=-1))
                t = m.qformer(query_embeds=m.embeddings(input_ids=ids), query_length=0,
                              attention_mask=mask).last_hidden_state
                txt_feats.append(torch.nn.functional.normalize(m.text_projection(t[:, 0]), dim=-1))
            else:
                m = BlipForImageTextRetrieval.from_pretrained(mdir, attn_implementation="eager") \
                    if i == 0 else m
                vision = m.vision_model(pixel_values=pv).last_hidden_state
                img_feats.append(torch.nn.functional.normalize(m.vision_proj(vision[:, 0]), dim=-1))
                t = m.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                txt_feats.append(torch.nn.functional.normalize(m.text_proj(t[:, 0]), dim=-1))
        img, txt = torch.cat(img_feats), torch.cat(txt_feats)
        sim = (torch.einsum("iqe,te->itq", img, txt).max(dim=-1).values if img.dim() == 3
               else img @ txt.t())
        r = recalls(sim)
        rep.add(name, f"ITC recall on {len(images)} val pairs",
                "R@1 {i2t_r1:.1%} / {t2i_r1:.1%}, R@5 {i2t_r5:.1%} / {t2i_r5:.1%} "
                "(image->text / text->image)".format(**r), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glimpse", required=True, help="the glimpse binary")
    ap.add_argument("--model", required=True, type=Path, help="a Blip2ForImageTextRetrieval directory")
    ap.add_argument("--synth-data", type=Path, default=REPO / "data" / "synth")
    ap.add_argument("--images", nargs="*")
    ap.add_argument("--texts", nargs="*")
    ap.add_argument("--recall", type=int, default=0, metavar="N",
                    help="also report ITC recall over the first N validation pairs")
    ap.add_argument("--baseline", type=Path, default=REPO / "models" / "blip-synth" / "retrieval")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        print(f"error: {args.model} has no config.json", file=sys.stderr)
        return 2
    rep = Report(args.atol)
    with tempfile.TemporaryDirectory() as tmp:
        synth = synth_samples(args.synth_data, 3, Path(tmp))
        images = args.images or [str(REPO / p) for p in DEFAULT_PHOTOS] + [p for p, _ in synth]
        texts = args.texts or ([r["caption"] for _, r in synth if r.get("caption")] + EXTRA_TEXTS)
        check(rep, args.model, images, texts, Cli(args.glimpse, args.timeout))
    if args.recall > 0:
        recall_table(rep, args.model, args.baseline, args.synth_data, args.recall)
    return 0 if rep.print() else 1


if __name__ == "__main__":
    sys.exit(main())
