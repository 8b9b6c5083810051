"""The Python side of the CapFilt throughput comparison (docs/capfilt.md): the same
work as `glimpse capfilt` with transformers on PyTorch (CPU), on the same models and
shards. For each batch of images: one nucleus-sampled caption each
(`BlipForConditionalGeneration.generate`, prompt "a picture of", top-p 0.9, top-k off,
repetition penalty 1.1, 6 to 26 new tokens, as `glimpse capfilt`'s defaults give for
that prompt), then the ITM probability of the web caption and the synthetic one
(`BlipForImageTextRetrieval`, `use_itm_head=True`, the batch's image-text pairs in one
call), then the records written into an output tar shard as WebDataset entries.

    PY=tools/.venv/bin/python
    $PY tools/bench/capfilt_throughput.py --data DIR_OF_SHARDS --out /tmp/cf-py \\
        --captioner models/blip-synth/caption --filter models/blip-synth/retrieval

Prints one JSON line: images, seconds (after imports and model loading), images/s,
load seconds, torch threads, versions.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import tarfile
import time


def samples(path):
    """(key, image name, image bytes, record) of a WebDataset shard, in order."""
    groups = {}
    order = []
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            key, _, ext = base.partition(".")
            key = os.path.join(os.path.dirname(m.name), key)
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = tar.extractfile(m).read()
    for key in order:
        g = groups[key]
        ext = next(e for e in ("png", "jpg", "jpeg", "webp") if e in g)
        yield key, ext, g[ext], json.loads(g["json"])


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--captioner", default="models/blip-synth/caption")
    p.add_argument("--filter", default="models/blip-synth/retrieval")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.5)
    a = p.parse_args()

    t0 = time.time()
    import torch
    import transformers
    from PIL import Image
    from transformers import (BertTokenizerFast, BlipForConditionalGeneration,
                              BlipForImageTextRetrieval, BlipImageProcessor)

    torch.manual_seed(0)
    cap = BlipForConditionalGeneration.from_pretrained(a.captioner).eval()
    itm = BlipForImageTextRetrieval.from_pretrained(a.filter).eval()
    proc_c = BlipImageProcessor.from_pretrained(a.captioner)
    proc_f = BlipImageProcessor.from_pretrained(a.filter)
    tok_c = BertTokenizerFast(tokenizer_file=os.path.join(a.captioner, "tokenizer.json"))
    tok_f = BertTokenizerFast(tokenizer_file=os.path.join(a.filter, "tokenizer.json"))
    load = time.time() - t0

    os.makedirs(a.out, exist_ok=True)
    shards = sorted(glob.glob(os.path.join(a.data, "**", "*.tar"), recursive=True))
    prompt = tok_c(["a picture of"], return_tensors="pt").input_ids
    n = 0
    start = time.time()
    with torch.inference_mode():
        for si, shard in enumerate(shards):
            with tarfile.open(os.path.join(a.out, f"shard-{si:06d}.tar"), "w") as out:
                items = list(samples(shard))
                for b in range(0, len(items), a.batch_size):
                    batch = items[b:b + a.batch_size]
                    images = [Image.open(io.BytesIO(x[2])).convert("RGB") for x in batch]
                    pixels = proc_c(images, return_tensors="pt").pixel_values
                    ids = cap.generate(pixel_values=pixels, input_ids=prompt.repeat(len(batch), 1),
                                       do_sample=True, top_p=0.9, top_k=0, repetition_penalty=1.1,
                                       min_new_tokens=6, max_new_tokens=26)
                    synthetic = [t[len("a picture of"):].strip()
                                 for t in tok_c.batch_decode(ids, skip_special_tokens=True)]
                    web = [x[3].get("caption", "") for x in batch]
                    texts = [t for pair in zip(web, synthetic) for t in pair]
                    fp = proc_f(images, return_tensors="pt").pixel_values.repeat_interleave(2, dim=0)
                    enc = tok_f(texts, padding=True, truncation=True, max_length=40, return_tensors="pt")
                    logits = itm(pixel_values=fp, input_ids=enc.input_ids,
                                 attention_mask=enc.attention_mask, use_itm_head=True).itm_score
                    probs = torch.softmax(logits, dim=1)[:, 1].tolist()
                    for i, (key, ext, data, rec) in enumerate(batch):
                        pw, ps = probs[2 * i], probs[2 * i + 1]
                        w = {"text": web[i], "itm": pw, "kept": pw >= a.threshold}
                        s = {"text": synthetic[i], "itm": ps, "kept": ps >= a.threshold}
                        rec["capfilt"] = {"web": w, "synthetic": [s],
                                          "texts": [x["text"] for x in (w, s) if x["kept"]]}
                        add(out, f"{key}.{ext}", data)
                        add(out, f"{key}.json", json.dumps(rec).encode())
                    n += len(batch)
    seconds = time.time() - start
    print(json.dumps({
        "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
        "load_seconds": round(load, 2), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
