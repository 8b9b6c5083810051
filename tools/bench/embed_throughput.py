"""The Python side of the embedding-throughput benchmark (docs/retrieval.md): decode,
preprocess and embed a folder of JPEG photographs with transformers' CLIPModel, images
read by a PyTorch DataLoader with the same number of worker processes as Glimpse's
decode threads. clip-retrieval's `clip-inference` is this same pipeline (a DataLoader
over files, `open_clip`/`clip` preprocessing, `encode_image`) with more dependencies.

    PY=tools/.venv/bin/python
    # A folder of real-size JPEGs made from the photographs scikit-image ships
    # (random crops of at least half of each side, mirrored at random, quality 90).
    $PY tools/bench/embed_throughput.py photos --out bench-out/photos --count 512
    # CLIP ViT-B/32 with seeded random weights (reference.py's config), with the
    # bundled CLIP's tokenizer so that Glimpse can load it (text is not timed).
    $PY tools/bench/embed_throughput.py model --out bench-out/models/clip-vit-base-patch32-index
    # The timed run: one JSON line.
    $PY tools/bench/embed_throughput.py time --model bench-out/models/clip-vit-base-patch32-index \
        --data bench-out/photos --workers 2 --batch-size 32 [--quantize int8]

`--quantize int8` runs the model under PyTorch's dynamic int8 quantisation of its
linear layers (`torch.ao.quantization.quantize_dynamic`), the counterpart of
`glimpse index build --quantize q8`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png"]


def make_photos(out: Path, count: int) -> None:
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).resolve().parent / "data"
    sources = [Image.open(data / name).convert("RGB") for name in PHOTOS if (data / name).is_file()]
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = sources[i % len(sources)]
        w, h = img.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(out / f"photo_{i:05d}.jpg", quality=90)
    sizes = [Image.open(p).size for p in sorted(out.glob("*.jpg"))]
    mean = sum(w * h for w, h in sizes) / len(sizes)
    print(f"{out}: {len(sizes)} JPEGs from {len(sources)} photographs, mean {mean / 1e3:.0f} kpx", file=sys.stderr)


def make_model(out: Path) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    sys.path.insert(0, str(REPO / "tools" / "bench"))
    import reference

    torch.manual_seed(reference.SEED)
    model = CLIPModel(reference.clip_config()).to(torch.float32).eval()
    model.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=reference.OPENAI_MEAN,
        image_std=reference.OPENAI_STD,
    ).save_pretrained(out)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
        src = REPO / "models" / "clip-synth" / name
        if src.is_file():
            shutil.copyfile(src, out / name)
    print(f"{out}: CLIP ViT-B/32, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", file=sys.stderr)


def time_run(model_dir: Path, data: Path, workers: int, batch_size: int, quantize: str | None) -> None:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from transformers import CLIPImageProcessor, CLIPModel

    files = sorted(p for p in data.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    processor = CLIPImageProcessor.from_pretrained(model_dir)

    class Photos(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                rgb = im.convert("RGB")
            return processor(images=rgb, return_tensors="pt")["pixel_values"][0]

    start = time.perf_counter()
    model = CLIPModel.from_pretrained(model_dir).eval()
    if quantize == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    load_s = time.perf_counter() - start
    loader = DataLoader(Photos(), batch_size=batch_size, num_workers=workers)
    rows = 0
    with torch.inference_mode():
        for pixels in loader:
            feats = model.get_image_features(pixel_values=pixels)
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            feats = torch.nn.functional.normalize(feats, dim=-1)
            rows += feats.shape[0]
    total = time.perf_counter() - start
    print(json.dumps({
        "images": rows,
        "seconds": round(total, 3),
        "load_seconds": round(load_s, 3),
        "images_per_s": round(rows / total, 2),
        "images_per_s_after_load": round(rows / (total - load_s), 2),
        "workers": workers,
        "batch_size": batch_size,
        "quantize": quantize or "f32",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("photos")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--count", type=int, default=512)
    a = sub.add_parser("model")
    a.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("time")
    a.add_argument("--model", type=Path, required=True)
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--quantize", choices=["int8"])
    args = p.parse_args()
    if args.cmd == "photos":
        make_photos(args.out, args.count)
    elif args.cmd == "model":
        make_model(args.out)
    else:
        time_run(args.model, args.data, args.workers, args.batch_size, args.quantize)


if __name__ == "__main__":
    main()
