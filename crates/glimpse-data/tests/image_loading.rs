//! Loading: colour conversions as PIL's `convert("RGB")`, EXIF orientation as
//! `ImageOps.exif_transpose`, and refusals that name the file.

mod common;

use std::path::Path;

use common::{chunk, exif_orientation, fixtures_dir, jpeg_with_exif, png};
use glimpse_data::{decode_image, load_image, Error};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_names(err: &Error, name: &str) {
    let msg = err.to_string();
    assert!(msg.contains(name), "error does not name {name}: {msg}");
}

#[test]
fn grey_and_grey_alpha_replicate_the_grey_level() {
    let img = decode_image(&png(2, 1, 8, 0, &[vec![7, 200]], &[]), "l.png").unwrap();
    assert_eq!(img.as_raw(), &[7, 7, 7, 200, 200, 200]);
    let img = decode_image(&png(2, 1, 8, 4, &[vec![7, 0, 200, 255]], &[]), "la.png").unwrap();
    assert_eq!(img.as_raw(), &[7, 7, 7, 200, 200, 200]);
}

#[test]
fn rgba_drops_alpha_without_compositing() {
    let img = decode_image(&png(1, 1, 8, 6, &[vec![10, 20, 30, 0]], &[]), "rgba.png").unwrap();
    assert_eq!(img.as_raw(), &[10, 20, 30]);
}

#[test]
fn palette_is_expanded_and_transparency_ignored() {
    let plte = chunk(b"PLTE", &[255, 0, 0, 0, 128, 255]);
    let trns = chunk(b"tRNS", &[0]);
    let img = decode_image(&png(3, 1, 8, 3, &[vec![1, 0, 1]], &[plte, trns]), "p.png").unwrap();
    assert_eq!(img.as_raw(), &[0, 128, 255, 255, 0, 0, 0, 128, 255]);
}

#[test]
fn sixteen_bit_follows_pil() {
    // Greyscale I;16 is clamped at 255 by PIL, not rescaled.
    let row: Vec<u8> = [100u16, 300, 0xffff]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let img = decode_image(&png(3, 1, 16, 0, &[row], &[]), "g16.png").unwrap();
    assert_eq!(img.as_raw(), &[100, 100, 100, 255, 255, 255, 255, 255, 255]);
    // RGB 16 keeps the high byte (0x7fff -> 0x7f, where rounding would give 0x80).
    let row: Vec<u8> = [0x7fffu16, 0x00ff, 0x8000]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let img = decode_image(&png(1, 1, 16, 2, &[row], &[]), "rgb16.png").unwrap();
    assert_eq!(img.as_raw(), &[0x7f, 0x00, 0x80]);
}

/// Where pixel (x, y) of the upright image comes from in the stored W x H image, as
/// PIL's `exif_transpose` does (checked against PIL for all eight values).
fn source_of(orientation: u16, x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
    match orientation {
        2 => (w - 1 - x, y),
        3 => (w - 1 - x, h - 1 - y),
        4 => (x, h - 1 - y),
        5 => (y, x),
        6 => (y, h - 1 - x),
        7 => (w - 1 - y, h - 1 - x),
        8 => (w - 1 - y, x),
        _ => (x, y),
    }
}

#[test]
fn all_eight_exif_orientations_in_png() {
    let (w, h) = (3u32, 2u32);
    let grey = |x: u32, y: u32| (y * w + x) as u8 * 40;
    let rows: Vec<Vec<u8>> = (0..h)
        .map(|y| (0..w).map(|x| grey(x, y)).collect())
        .collect();
    for o in 1..=8u16 {
        let bytes = png(w, h, 8, 0, &rows, &[chunk(b"eXIf", &exif_orientation(o))]);
        let img = decode_image(&bytes, &format!("o{o}.png")).unwrap();
        let (ow, oh) = if o >= 5 { (h, w) } else { (w, h) };
        assert_eq!(img.dimensions(), (ow, oh), "orientation {o}");
        for (x, y, p) in img.enumerate_pixels() {
            let (sx, sy) = source_of(o, x, y, w, h);
            assert_eq!(p.0, [grey(sx, sy); 3], "orientation {o} at ({x}, {y})");
        }
    }
}

#[test]
fn exif_orientation_in_jpeg() {
    // Four 16x16 solid blocks survive JPEG compression closely enough to be told apart.
    let colours = [
        [250u8, 10, 10],
        [10, 250, 10],
        [10, 10, 250],
        [250, 250, 10],
    ];
    let stored = image::RgbImage::from_fn(32, 16, |x, _| image::Rgb(colours[(x / 16) as usize]));
    let stored = image::RgbImage::from_fn(32, 32, |x, y| {
        if y < 16 {
            *stored.get_pixel(x, y)
        } else {
            image::Rgb(colours[2 + (x / 16) as usize])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .unwrap();
    let img = decode_image(&jpeg_with_exif(&jpeg, &exif_orientation(6)), "r.jpg").unwrap();
    // Rotated 90 degrees clockwise: the bottom-left block (index 2) is now top-left.
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(&p, q)| p.abs_diff(q) <= 12);
    assert!(
        near(img.get_pixel(8, 8).0, colours[2]),
        "{:?}",
        img.get_pixel(8, 8)
    );
    assert!(
        near(img.get_pixel(24, 8).0, colours[0]),
        "{:?}",
        img.get_pixel(24, 8)
    );
    assert!(
        near(img.get_pixel(8, 24).0, colours[3]),
        "{:?}",
        img.get_pixel(8, 24)
    );
}

#[test]
fn fixture_variants_load_with_expected_shapes() {
    let dir = fixtures_dir().join("images");
    if !dir.is_dir() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    // The EXIF variant is the small cat stored rotated, tagged so that it loads upright.
    let small = load_image(&dir.join("cat_small.png")).unwrap();
    for name in [
        "cat_gray.png",
        "cat_rgba.png",
        "cat_palette.png",
        "cat_rgb16.png",
        "cat_exif6.jpg",
    ] {
        let img = load_image(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.dimensions(), small.dimensions(), "{name}");
    }
}

#[test]
fn broken_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = png(4, 4, 8, 2, &vec![vec![9; 12]; 4], &[]);
    let cases = [
        ("truncated.png", good[..good.len() - 30].to_vec()),
        ("text.jpg", b"this is not a JPEG, just text\n".to_vec()),
        ("empty.png", Vec::new()),
        ("noise.bin", vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ];
    for (name, bytes) in cases {
        let path = write(tmp.path(), name, &bytes);
        let err = load_image(&path).expect_err(name);
        assert_names(&err, name);
        let err = decode_image(&bytes, name).expect_err(name);
        assert_names(&err, name);
    }
    let err = load_image(&tmp.path().join("missing.png")).unwrap_err();
    assert_names(&err, "missing.png");
    for name in ["truncated.png", "not_an_image.jpg"] {
        let path = fixtures_dir().join("images").join(name);
        if path.is_file() {
            assert_names(&load_image(&path).expect_err(name), name);
        }
    }
}

#[test]
fn huge_header_is_refused_before_allocation() {
    // A 100000 x 100000 RGB header (30 GB decoded) over a few bytes of data.
    let bytes = png(100_000, 100_000, 8, 2, &[vec![0; 30]], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "huge.png", &bytes);
    let msg = load_image(&path).unwrap_err().to_string();
    assert!(
        msg.contains("huge.png") && msg.contains("100000x100000"),
        "{msg}"
    );
    let wide = png(60_000, 1, 8, 0, &[vec![0; 60_000]], &[]);
    let msg = decode_image(&wide, "wide.png").unwrap_err().to_string();
    assert!(msg.contains("wide.png") && msg.contains("60000x1"), "{msg}");
}
