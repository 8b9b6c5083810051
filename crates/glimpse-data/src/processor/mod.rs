//! The CLIP / BLIP image processors of the reference's PIL backend.
//!
//! Order and rounding follow `PilBackend._preprocess` in transformers: resize on the
//! uint8 image (PIL rounds and clamps the result back to uint8), centre crop with the
//! offset `(H - c) // 2` (zero padding when the image is smaller), rescale in f64 then
//! cast to f32, and normalise in f32. Resizing repeats Pillow's fixed-point arithmetic
//! (see `resample`), so lossless inputs give the reference's values exactly; only
//! nearest-neighbour goes through `fast_image_resize`.

mod config;
mod resample;

use std::path::Path;

use candle_core::{Device, Tensor};
use fast_image_resize::{
    self as fr, images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg,
};
use image::RgbImage;

pub use config::{
    ProcessorConfig, ProcessorFamily, Resample, ResizeTarget, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};

use crate::error::{Error, Result};

/// Turns RGB images into the `pixel_values` the vision towers expect.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ProcessorConfig,
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let config = ProcessorConfig::from_json_str(&text, &origin)?;
        Self::validated(config, &origin)
    }

    /// Wraps a configuration after checking that it can run.
    pub fn from_config(config: ProcessorConfig) -> Result<Self> {
        Self::validated(config, "image processor config")
    }

    fn validated(config: ProcessorConfig, origin: &str) -> Result<Self> {
        if config.do_center_crop && config.crop_size.is_none() {
            return Err(Error::config(
                origin,
                "do_center_crop is set but crop_size is missing",
            ));
        }
        if config.crop_size.is_some_and(|(h, w)| h == 0 || w == 0) {
            return Err(Error::config(origin, "crop_size must be positive"));
        }
        match config.size {
            ResizeTarget::ShortestEdge(0) => {
                return Err(Error::config(origin, "size must be positive"))
            }
            ResizeTarget::Exact { height, width } if height == 0 || width == 0 => {
                return Err(Error::config(origin, "size must be positive"))
            }
            ResizeTarget::ShortestEdge(s) => {
                check_output(s, s).map_err(|why| {
                    Error::config(
                        origin,
                        format!("size.shortest_edge = {s} is refused: images would become {why}"),
                    )
                })?;
            }
            ResizeTarget::Exact { height, width } => {
                check_output(height, width).map_err(|why| {
                    Error::config(
                        origin,
                        format!("size {{height: {height}, width: {width}}} is refused: {why}"),
                    )
                })?;
            }
        }
        if let Some((h, w)) = config.crop_size {
            check_output(h, w).map_err(|why| {
                Error::config(
                    origin,
                    format!("crop_size {{height: {h}, width: {w}}} is refused: {why}"),
                )
            })?;
        }
        if config.do_rescale && !config.rescale_factor.is_finite() {
            return Err(Error::config(
                origin,
                "rescale_factor must be a finite number",
            ));
        }
        if config.do_normalize && config.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(Error::config(
                origin,
                format!(
                    "image_std {:?} must be finite and non-zero",
                    config.image_std
                ),
            ));
        }
        Ok(ImageProcessor { config })
    }

    /// `(height, width)` of every output when it is fixed (crop, or resize to an exact
    /// size). With a shortest-edge resize and no crop the long side follows the input,
    /// and this returns the nominal square `(size, size)`.
    pub fn output_size(&self) -> (usize, usize) {
        let c = &self.config;
        match (c.do_center_crop, c.crop_size, c.size) {
            (true, Some(hw), _) => hw,
            (_, _, ResizeTarget::Exact { height, width }) => (height, width),
            (_, _, ResizeTarget::ShortestEdge(s)) => (s, s),
        }
    }

    /// One image to a `[3, H, W]` f32 tensor on the CPU.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let (h, w, values) = self.pixel_values(img)?;
        Ok(Tensor::from_vec(values, (3, h, w), &Device::Cpu)?)
    }

    /// A batch to `[n, 3, H, W]` on `device`; all images must come out the same size.
    pub fn preprocess_batch(&self, imgs: &[RgbImage], device: &Device) -> Result<Tensor> {
        if imgs.is_empty() {
            return Err(Error::Msg("preprocess_batch: no images given".into()));
        }
        let mut all = Vec::new();
        let mut shape = None;
        for (i, img) in imgs.iter().enumerate() {
            let (h, w, values) = self.pixel_values(img)?;
            match shape {
                None => shape = Some((h, w)),
                Some(s) if s != (h, w) => {
                    return Err(Error::Msg(format!(
                        "preprocess_batch: image {i} becomes {h}x{w} but image 0 became {}x{}; \
                         a shortest-edge resize without centre crop cannot be batched",
                        s.0, s.1
                    )))
                }
                _ => {}
            }
            all.extend(values);
        }
        let (h, w) = shape.unwrap_or((0, 0));
        Ok(Tensor::from_vec(all, (imgs.len(), 3, h, w), device)?)
    }

    /// Refuses an image of `w` x `h` pixels whose resize would make an image (or the
    /// intermediate image of its first pass) over the limits, before any allocation.
    pub fn check_size(&self, w: usize, h: usize) -> Result<()> {
        let c = &self.config;
        if !c.do_resize {
            return Ok(());
        }
        let (nh, nw) = resize_dims(h, w, c.size);
        // The horizontal pass makes an h x nw image, the vertical one nh x nw: an
        // extreme aspect ratio under a shortest-edge resize makes both huge.
        check_output(nh, nw)
            .and_then(|()| check_output(h, nw))
            .map_err(|why| {
                let target = match c.size {
                    ResizeTarget::ShortestEdge(s) => format!("size.shortest_edge = {s}"),
                    ResizeTarget::Exact { height, width } => format!("size {height}x{width}"),
                };
                Error::Msg(format!(
                    "an image of {w}x{h} pixels is refused: resizing it to {target} \
                     (preprocessor config) makes it {nw}x{nh} pixels, {why}"
                ))
            })
    }

    /// Runs the pipeline on the uint8 image, returning `(H, W, CHW values)`.
    fn pixel_values(&self, img: &RgbImage) -> Result<(usize, usize, Vec<f32>)> {
        let c = &self.config;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Msg("preprocess: image has no pixels".into()));
        }
        self.check_size(w, h)?;
        let mut current = std::borrow::Cow::Borrowed(img);
        if c.do_resize {
            let (nh, nw) = resize_dims(h, w, c.size);
            // PIL resamples horizontally first and rounds the intermediate image to
            // uint8; fast_image_resize would run the vertical pass first for u8 pixels,
            // which moves overshoot clamping and differs by up to ~9 grey levels at
            // sharp edges. One axis per call keeps PIL's order.
            if nw != w {
                current = std::borrow::Cow::Owned(resize(&current, h, nw, c.resample)?);
            }
            if nh != h {
                current = std::borrow::Cow::Owned(resize(&current, nh, nw, c.resample)?);
            }
        }
        if c.do_center_crop {
            let (ch, cw) = c.crop_size.unwrap_or((h, w));
            current = std::borrow::Cow::Owned(center_crop(&current, ch, cw));
        }
        Ok((
            current.height() as usize,
            current.width() as usize,
            self.to_chw_f32(&current),
        ))
    }

    /// Rescale (in f64, cast to f32 as numpy does) and normalise (in f32).
    fn to_chw_f32(&self, img: &RgbImage) -> Vec<f32> {
        let c = &self.config;
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        let mean = c.image_mean.map(|m| m as f32);
        let std = c.image_std.map(|s| s as f32);
        for (i, px) in img.pixels().enumerate() {
            for ch in 0..3 {
                let v = px.0[ch];
                let mut x = if c.do_rescale {
                    (f64::from(v) * c.rescale_factor) as f32
                } else {
                    f32::from(v)
                };
                if c.do_normalize {
                    x = (x - mean[ch]) / std[ch];
                }
                out[ch * plane + i] = x;
            }
        }
        out
    }
}

/// Largest side of an image the processor makes (resized or cropped), the limit of a
/// decoded image's side.
const MAX_SIDE: usize = 20_000;

/// Most pixels of an image the processor makes: 4096 x 4096, beyond any vision tower's
/// input. More comes from a broken config or an extreme aspect ratio and would cost
/// gigabytes (a 1x20000 strip under a 224-pixel shortest-edge resize: 3 GB).
const MAX_PIXELS: usize = 1 << 24;

/// Refuses an `h` x `w` image beyond [`MAX_SIDE`] or [`MAX_PIXELS`], saying why.
fn check_output(h: usize, w: usize) -> std::result::Result<(), String> {
    if h > MAX_SIDE || w > MAX_SIDE {
        return Err(format!(
            "larger than {MAX_SIDE} pixels on a side (the limit of an image)"
        ));
    }
    if h.saturating_mul(w) > MAX_PIXELS {
        return Err(format!(
            "over the limit of {MAX_PIXELS} pixels (4096x4096) of a processed image"
        ));
    }
    Ok(())
}

/// Output `(height, width)` of the resize step, as `get_resize_output_image_size`
/// computes it: the long side is `int(size * long / short)`, truncated.
pub fn resize_dims(h: usize, w: usize, target: ResizeTarget) -> (usize, usize) {
    match target {
        ResizeTarget::Exact { height, width } => (height, width),
        ResizeTarget::ShortestEdge(size) => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = ((size * long) as f64 / short as f64) as usize;
            if w <= h {
                (new_long, size)
            } else {
                (size, new_long)
            }
        }
    }
}

fn resize(img: &RgbImage, nh: usize, nw: usize, resample: Resample) -> Result<RgbImage> {
    if resample != Resample::Nearest {
        return Ok(resample::resize_like_pil(img, nh, nw, resample));
    }
    let alg = match resample {
        Resample::Nearest => ResizeAlg::Nearest,
        Resample::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
        Resample::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Resample::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        Resample::Box => ResizeAlg::Convolution(FilterType::Box),
        Resample::Hamming => ResizeAlg::Convolution(FilterType::Hamming),
    };
    let fail = |e: &dyn std::fmt::Display| Error::Msg(format!("resize to {nw}x{nh}: {e}"));
    let (nh32, nw32) = (
        u32::try_from(nh).map_err(|e| fail(&e))?,
        u32::try_from(nw).map_err(|e| fail(&e))?,
    );
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| fail(&e))?;
    let mut dst = Image::new(nw32, nh32, PixelType::U8x3);
    fr::Resizer::new()
        .resize(&src, &mut dst, &fr::ResizeOptions::new().resize_alg(alg))
        .map_err(|e| fail(&e))?;
    RgbImage::from_raw(nw32, nh32, dst.into_vec()).ok_or_else(|| fail(&"buffer size mismatch"))
}

/// Crop of `(ch, cw)` at offset `floor((H - ch) / 2)`; where the crop reaches past the
/// image the reference pads with zeros, and so do we.
fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let (h, w) = (img.height() as i64, img.width() as i64);
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    RgbImage::from_fn(cw as u32, ch as u32, |x, y| {
        let (sy, sx) = (top + i64::from(y), left + i64::from(x));
        if (0..h).contains(&sy) && (0..w).contains(&sx) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests;
