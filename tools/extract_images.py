"""Copy a few real photographs out of the installed scikit-image package and derive
small test variants from one of them.

Outputs (nothing is downloaded; every source file ships inside `skimage/data`):

- examples/images/: byte-for-byte copies of the photos, with descriptive names.
- tools/fixtures/images/: variants of the cat photo downscaled to 160 px wide, one per
  decoding path that a loader must handle (grey, alpha, palette, 16-bit, EXIF rotation),
  plus two broken inputs (a truncated PNG and a text file named .jpg).

Run: tools/.venv/bin/python tools/extract_images.py
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "images"
VARIANTS = REPO / "tools" / "fixtures" / "images"
SKIMAGE_DATA = Path(skimage.__file__).resolve().parent / "data"

# (file inside skimage/data, name in examples/images)
PHOTOS = [
    ("chelsea.png", "cat.png"),  # Stefan van der Walt's cat Chelsea
    ("coffee.png", "coffee.png"),  # a cup of coffee on a saucer
    ("astronaut.png", "astronaut.png"),  # Eileen Collins, NASA portrait
    ("rocket.jpg", "rocket.jpg"),  # a rocket on the launch pad (JPEG, lossy)
]

VARIANT_WIDTH = 160
EXIF_ORIENTATION = 0x0112


def copy_photos() -> None:
    EXAMPLES.mkdir(parents=True, exist_ok=True)
    for src_name, dst_name in PHOTOS:
        src = SKIMAGE_DATA / src_name
        if not src.is_file():
            raise SystemExit(f"missing {src}: is scikit-image installed in this venv?")
        shutil.copyfile(src, EXAMPLES / dst_name)


def write_png_rgb16(path: Path, rgb16: np.ndarray) -> None:
    """Write an [H, W, 3] uint16 array as a 16-bit-per-channel RGB PNG.

    PIL cannot write this format, so the chunks are assembled by hand.
    """
    height, width, _ = rgb16.shape
    raw = rgb16.astype(">u2").tobytes()
    stride = width * 3 * 2
    # Filter type 0 (None) before every scanline.
    scanlines = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # depth 16, colour type 2 (RGB)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines, 9))
    path.write_bytes(png + chunk(b"IEND", b""))


def make_variants() -> None:
    VARIANTS.mkdir(parents=True, exist_ok=True)
    with Image.open(SKIMAGE_DATA / "chelsea.png") as im:
        photo = im.convert("RGB")
    height = round(photo.height * VARIANT_WIDTH / photo.width)
    small = photo.resize((VARIANT_WIDTH, height), Image.Resampling.LANCZOS)
    small.save(VARIANTS / "cat_small.png", optimize=True)
    pixels = np.asarray(small)

    # Grayscale (mode L).
    small.convert("L").save(VARIANTS / "cat_gray.png", optimize=True)

    # RGBA with a horizontal alpha ramp (0 at the left edge, 255 at the right) and a fully
    # transparent band; the colour channels under it stay the photo's.
    alpha = np.tile(np.linspace(0, 255, VARIANT_WIDTH).round().astype(np.uint8), (height, 1))
    alpha[: height // 6] = 0
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(VARIANTS / "cat_rgba.png", optimize=True)

    # Palette (mode P), 64 adaptive colours, no dithering.
    small.quantize(colors=64, dither=Image.Dither.NONE).save(VARIANTS / "cat_palette.png", optimize=True)

    # 16-bit RGB. Each 8-bit value v becomes v * 257 (v in both bytes), so any sane 16->8 bit
    # reduction (high byte, or round(v16 / 257)) recovers the 8-bit photo exactly.
    write_png_rgb16(VARIANTS / "cat_rgb16.png", pixels.astype(np.uint16) * 257)

    # JPEG stored rotated 90 degrees counter-clockwise with EXIF orientation 6 ("rotate 90 CW
    # to display"), so the upright image equals cat_small. 4:4:4 chroma and high quality keep
    # decoder differences small (they remain: this input is lossy).
    rotated = small.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    rotated.save(VARIANTS / "cat_exif6.jpg", quality=95, subsampling=0, exif=exif.tobytes())

    # Broken inputs.
    full = (VARIANTS / "cat_small.png").read_bytes()
    (VARIANTS / "truncated.png").write_bytes(full[: len(full) // 2])
    (VARIANTS / "not_an_image.jpg").write_text("This is a text file, not a JPEG image.\n")


def check_variants() -> None:
    small = np.asarray(Image.open(VARIANTS / "cat_small.png").convert("RGB"))
    with Image.open(VARIANTS / "cat_rgb16.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), small), "16-bit PNG does not round-trip"
    with Image.open(VARIANTS / "cat_exif6.jpg") as im:
        assert im.getexif().get(EXIF_ORIENTATION) == 6
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(np.int32)
    assert upright.shape == small.shape, (upright.shape, small.shape)
    err = np.abs(upright - small).mean()
    assert err < 3.0, f"EXIF-rotated JPEG differs from the upright photo by {err:.2f} grey levels on average"
    for name, mode in [("cat_gray.png", "L"), ("cat_rgba.png", "RGBA"), ("cat_palette.png", "P")]:
        with Image.open(VARIANTS / name) as im:
            assert im.mode == mode, (name, im.mode)


def main() -> None:
    copy_photos()
    make_variants()
    check_variants()
    for folder in (EXAMPLES, VARIANTS):
        total = 0
        for path in sorted(folder.iterdir()):
            total += path.stat().st_size
            print(f"{path.relative_to(REPO)}  {path.stat().st_size:>8} bytes")
        print(f"{folder.relative_to(REPO)}: {total} bytes in all")


if __name__ == "__main__":
    main()
