//! Image loading that matches what the reference feeds its processors.
//!
//! The reference (`transformers.image_utils.load_image`) opens a file with PIL, applies
//! `ImageOps.exif_transpose` and calls `convert("RGB")`. We do the same with the `image`
//! crate, and reproduce PIL's colour conversion where it differs from `image`'s own:
//! PIL drops alpha without compositing, clamps 16-bit greyscale (`I;16`) to 255 instead
//! of rescaling it, and keeps the high byte of 16-bit RGB(A) and LA samples.
//!
//! Decoding is bounded: the header is read first and an image whose dimensions or
//! decoded size exceed [`ImageLimits`] is refused before its pixel buffer exists, so a
//! hostile 100000x100000 header costs nothing.
//!
//! A truncated file is refused, as Pillow refuses it. The PNG, GIF, WebP, BMP and TIFF
//! decoders report missing data themselves; the JPEG decoder fills the missing rows
//! with grey and succeeds, so a JPEG must reach its end-of-image marker.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;

use image::error::{DecodingError, ImageFormatHint};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Bounds on what the decoder may allocate; the defaults admit any camera photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted width or height, in pixels.
    pub max_dimension: u32,
    /// Largest accepted decoded buffer, in bytes (in the file's own pixel format).
    pub max_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_dimension: 20_000,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Loads an image file (PNG, JPEG, GIF, BMP, WebP, TIFF) as upright 8-bit RGB, with
/// the default [`ImageLimits`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_image_with_limits(path, ImageLimits::default())
}

/// [`load_image`] with explicit limits.
pub fn load_image_with_limits(path: &Path, limits: ImageLimits) -> Result<RgbImage> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let name = path.display().to_string();
    if len == 0 {
        return Err(Error::EmptyImage { name });
    }
    decode_reader(BufReader::new(file), &name, limits)
}

/// Decodes an in-memory image; `name` (a file name or URL) is used for the format
/// fallback by extension and in error messages.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode_image_with_limits(bytes, name, ImageLimits::default())
}

/// [`decode_image`] with explicit limits.
pub fn decode_image_with_limits(bytes: &[u8], name: &str, limits: ImageLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::EmptyImage {
            name: name.to_string(),
        });
    }
    decode_reader(Cursor::new(bytes), name, limits)
}

fn decode_reader<R: BufRead + Seek>(
    reader: R,
    name: &str,
    limits: ImageLimits,
) -> Result<RgbImage> {
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| decode_error(name, ImageError::IoError(e)))?;
    if reader.format().is_none() {
        // The magic bytes decide when they can; the extension is only a fallback,
        // so a PNG named .jpg still loads and a text file named .jpg fails to decode.
        match ImageFormat::from_path(name) {
            Ok(format) => reader.set_format(format),
            Err(_) => {
                return Err(Error::UnknownFormat {
                    name: name.to_string(),
                })
            }
        }
    }
    if reader.format() == Some(ImageFormat::Jpeg) {
        // The JPEG decoder reads the whole file into memory anyway.
        let mut bytes = Vec::new();
        reader
            .into_inner()
            .read_to_end(&mut bytes)
            .map_err(|e| decode_error(name, ImageError::IoError(e)))?;
        if !jpeg_is_complete(&bytes) {
            return Err(decode_error(
                name,
                ImageError::Decoding(DecodingError::new(
                    ImageFormatHint::Exact(ImageFormat::Jpeg),
                    "the file ends before the end-of-image marker: it is truncated",
                )),
            ));
        }
        return decode_known(
            ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg),
            name,
            limits,
        );
    }
    decode_known(reader, name, limits)
}

fn decode_error(name: &str, source: ImageError) -> Error {
    Error::Decode {
        name: name.to_string(),
        source,
    }
}

/// Whether a JPEG stream reaches its end-of-image marker (EOI). Marker segments are
/// skipped by their length (an EXIF thumbnail inside one carries its own EOI); in
/// entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker,
/// so the walk steps over those and stops at the next real marker.
fn jpeg_is_complete(data: &[u8]) -> bool {
    if !data.starts_with(&[0xFF, 0xD8]) {
        // Not a JPEG stream at all: the decoder says what is wrong with it.
        return true;
    }
    let mut i = 2;
    loop {
        while i < data.len() && data[i] != 0xFF {
            i += 1;
        }
        while i < data.len() && data[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Stuffing, restart markers and TEM stand alone.
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = data.get(i..i + 2) else {
                    return false;
                };
                i += usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
}

/// Decodes with the format decided, within `limits`.
fn decode_known<R: BufRead + Seek>(
    mut reader: ImageReader<R>,
    name: &str,
    limits: ImageLimits,
) -> Result<RgbImage> {
    let decode_err = |source| decode_error(name, source);
    // Dimension limits are checked by us (to name the size in the error); the
    // allocation limit also bounds the decoders' internal buffers.
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(limits.max_bytes);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;

    let (width, height) = decoder.dimensions();
    check_size(name, width, height, decoder.total_bytes(), limits)?;
    // A malformed EXIF block is not worth refusing a decodable image over; PIL also
    // carries on with the image as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(to_rgb_like_pil(img))
}

fn check_size(name: &str, width: u32, height: u32, bytes: u64, limits: ImageLimits) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::TooLarge {
            name: name.to_string(),
            width,
            height,
            reason,
        })
    };
    if width == 0 || height == 0 {
        return refuse("an image needs at least one pixel".to_string());
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return refuse(format!(
            "a side exceeds the limit of {} pixels",
            limits.max_dimension
        ));
    }
    // The RGB8 copy we return is a second buffer of w*h*3 bytes.
    let rgb_bytes = u64::from(width) * u64::from(height) * 3;
    if bytes.max(rgb_bytes) > limits.max_bytes {
        return refuse(format!(
            "decoding needs {} MiB, over the limit of {} MiB",
            bytes.max(rgb_bytes) >> 20,
            limits.max_bytes >> 20
        ));
    }
    Ok(())
}

/// Converts to RGB8 the way PIL's `Image.convert("RGB")` does for the mode PIL would
/// have opened the file in.
pub(crate) fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => from_fn(&|x, y| {
            let p = rgba.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma8(l) => from_fn(&|x, y| [l.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(la) => from_fn(&|x, y| [la.get_pixel(x, y).0[0]; 3]),
        // PIL opens 16-bit greyscale as `I;16`, whose conversion to RGB clamps at 255.
        DynamicImage::ImageLuma16(l) => from_fn(&|x, y| [l.get_pixel(x, y).0[0].min(255) as u8; 3]),
        // 16-bit LA, RGB and RGBA are unpacked by PIL to 8 bits by keeping the high byte.
        DynamicImage::ImageLumaA16(la) => {
            from_fn(&|x, y| [(la.get_pixel(x, y).0[0] >> 8) as u8; 3])
        }
        DynamicImage::ImageRgb16(rgb) => from_fn(&|x, y| {
            let p = rgb.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(rgba) => from_fn(&|x, y| {
            let p = rgba.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_conversions_follow_pil() {
        let l16 = image::ImageBuffer::from_raw(3, 1, vec![100u16, 255, 4000]).unwrap();
        let rgb = to_rgb_like_pil(DynamicImage::ImageLuma16(l16));
        assert_eq!(rgb.as_raw(), &[100, 100, 100, 255, 255, 255, 255, 255, 255]);

        let rgb16 = image::ImageBuffer::from_raw(1, 1, vec![0x7f80u16, 0x00ff, 0xffff]).unwrap();
        let rgb = to_rgb_like_pil(DynamicImage::ImageRgb16(rgb16));
        assert_eq!(rgb.as_raw(), &[0x7f, 0x00, 0xff]);
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let rgba = image::RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0]).unwrap();
        let rgb = to_rgb_like_pil(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[10, 20, 30]);
    }

    fn encoded(format: ImageFormat) -> Vec<u8> {
        // Noise, so that no encoder can squeeze the pixels into a few bytes.
        let img = RgbImage::from_fn(64, 48, |x, y| {
            let v = (x * 7919 + y * 104_729) ^ (x * y * 31);
            image::Rgb([v as u8, (v >> 3) as u8, (v >> 6) as u8])
        });
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let bytes = encoded(ImageFormat::Jpeg);
        assert!(decode_image(&bytes, "whole.jpg").is_ok());
        for keep in [bytes.len() / 3, bytes.len() - 2] {
            let err = decode_image(&bytes[..keep], "cut.jpg")
                .unwrap_err()
                .report();
            assert!(
                err.contains("cut.jpg") && err.contains("truncated"),
                "{err}"
            );
        }
        // Bytes after the end-of-image marker are not a truncation.
        let mut padded = bytes.clone();
        padded.extend_from_slice(b"trailing");
        assert!(decode_image(&padded, "padded.jpg").is_ok());
    }

    #[test]
    fn truncated_images_of_every_format_are_refused() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let bytes = encoded(format);
            let name = format!("img.{}", format.extensions_str()[0]);
            assert!(decode_image(&bytes, &name).is_ok(), "{format:?}");
            let cut = &bytes[..bytes.len() * 2 / 3];
            let err = decode_image(cut, &name);
            assert!(err.is_err(), "{format:?}: a truncated file decodes");
        }
    }

    #[test]
    fn zero_and_oversized_dimensions_are_refused() {
        let limits = ImageLimits::default();
        assert!(check_size("a.png", 0, 5, 0, limits).is_err());
        assert!(check_size("a.png", 30_000, 5, 0, limits).is_err());
        assert!(check_size("a.png", 19_000, 19_000, 0, limits).is_err());
        assert!(check_size("a.png", 4000, 3000, 36_000_000, limits).is_ok());
    }
}
