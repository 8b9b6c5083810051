//! `preprocessor_config.json` in the reference's schema.
//!
//! The file may leave out any field; the reference then takes the class attribute of
//! the processor named by `image_processor_type` (CLIP and BLIP differ in size, crop
//! and square-ness), and a JSON `null` means "use the default" too. We therefore
//! deserialise into a raw form of optional values and resolve it against the right
//! family's defaults, so that [`ProcessorConfig`] holds only concrete settings.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// OpenAI CLIP statistics, the default of both CLIP and BLIP processors.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// See [`OPENAI_CLIP_MEAN`].
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Which reference processor class a configuration belongs to; it decides defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorFamily {
    /// `CLIPImageProcessor` (also used by LLaVA): shortest-edge resize, centre crop.
    Clip,
    /// `BlipImageProcessor` (BLIP and BLIP-2): resize to a fixed square, no crop.
    Blip,
}

/// Target of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so that the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(usize),
    /// Scale to exactly this size, ignoring the aspect ratio.
    Exact { height: usize, width: usize },
}

/// PIL resampling filters, by their PIL ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Resample {
    fn from_value(value: &Value, origin: &str) -> Result<Self> {
        let by_id = |id: i64| match id {
            0 => Some(Resample::Nearest),
            1 => Some(Resample::Lanczos),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            4 => Some(Resample::Box),
            5 => Some(Resample::Hamming),
            _ => None,
        };
        let found = match value {
            Value::Number(n) => n.as_i64().and_then(by_id),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "nearest" => Some(Resample::Nearest),
                "lanczos" | "antialias" => Some(Resample::Lanczos),
                "bilinear" | "linear" => Some(Resample::Bilinear),
                "bicubic" | "cubic" => Some(Resample::Bicubic),
                "box" => Some(Resample::Box),
                "hamming" => Some(Resample::Hamming),
                _ => None,
            },
            _ => None,
        };
        found.ok_or_else(|| {
            Error::config(
                origin,
                format!("unknown resample {value} (PIL ids: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"),
            )
        })
    }
}

/// Resolved image processor settings (every default applied).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawProcessorConfig")]
pub struct ProcessorConfig {
    pub family: ProcessorFamily,
    pub image_processor_type: Option<String>,
    pub processor_class: Option<String>,
    pub do_resize: bool,
    pub size: ResizeTarget,
    pub resample: Resample,
    pub do_center_crop: bool,
    /// `(height, width)`; `None` where the family has no default and the file none.
    pub crop_size: Option<(usize, usize)>,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Kept for completeness: our inputs are already RGB when they reach the processor.
    pub do_convert_rgb: bool,
}

impl ProcessorConfig {
    /// The reference defaults of a family, as if `preprocessor_config.json` were `{}`.
    pub fn defaults(family: ProcessorFamily) -> Self {
        let clip = family == ProcessorFamily::Clip;
        ProcessorConfig {
            family,
            image_processor_type: None,
            processor_class: None,
            do_resize: true,
            size: if clip {
                ResizeTarget::ShortestEdge(224)
            } else {
                ResizeTarget::Exact {
                    height: 384,
                    width: 384,
                }
            },
            resample: Resample::Bicubic,
            do_center_crop: clip,
            crop_size: clip.then_some((224, 224)),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }

    /// Parses a configuration from JSON text; `origin` names it in errors.
    ///
    /// Accepts both a `preprocessor_config.json` (the image processor's fields at the
    /// top level) and a transformers 5 `processor_config.json`, which nests them under
    /// `"image_processor"` next to the processor's own fields.
    pub fn from_json_str(json: &str, origin: &str) -> Result<Self> {
        let mut value: Value = serde_json::from_str(json)
            .map_err(|e| Error::config(origin, format!("invalid JSON: {e}")))?;
        if let Some(nested) = value.get_mut("image_processor").map(Value::take) {
            value = nested;
        }
        let raw: RawProcessorConfig = serde_json::from_value(value)
            .map_err(|e| Error::config(origin, format!("invalid image processor config: {e}")))?;
        raw.resolve(origin)
    }
}

/// The file as written, before defaults.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawProcessorConfig {
    image_processor_type: Option<String>,
    feature_extractor_type: Option<String>,
    processor_class: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<Value>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    do_convert_rgb: Option<bool>,
    default_to_square: Option<bool>,
}

impl TryFrom<RawProcessorConfig> for ProcessorConfig {
    type Error = Error;
    fn try_from(raw: RawProcessorConfig) -> Result<Self> {
        raw.resolve("preprocessor_config.json")
    }
}

impl RawProcessorConfig {
    fn family(&self, origin: &str) -> Result<ProcessorFamily> {
        let named = self
            .image_processor_type
            .as_deref()
            .or(self.feature_extractor_type.as_deref());
        let Some(name) = named else {
            // Old files name only the processor; files with neither are CLIP-style
            // (the layout most third-party exports copy).
            return Ok(match &self.processor_class {
                Some(p) if p.to_ascii_lowercase().contains("blip") => ProcessorFamily::Blip,
                _ => ProcessorFamily::Clip,
            });
        };
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("blip") {
            Ok(ProcessorFamily::Blip)
        } else if lower.starts_with("clip") {
            Ok(ProcessorFamily::Clip)
        } else {
            Err(Error::config(
                origin,
                format!("unsupported image_processor_type {name:?} (expected CLIPImageProcessor or BlipImageProcessor)"),
            ))
        }
    }

    fn resolve(self, origin: &str) -> Result<ProcessorConfig> {
        let family = self.family(origin)?;
        let d = ProcessorConfig::defaults(family);
        let default_to_square = self
            .default_to_square
            .unwrap_or(family == ProcessorFamily::Blip);
        let size = match &self.size {
            None | Some(Value::Null) => d.size,
            Some(v) => parse_size(v, default_to_square, "size", origin)?,
        };
        let crop_size = match &self.crop_size {
            None | Some(Value::Null) => d.crop_size,
            Some(v) => match parse_size(v, true, "crop_size", origin)? {
                ResizeTarget::Exact { height, width } => Some((height, width)),
                ResizeTarget::ShortestEdge(_) => {
                    return Err(Error::config(origin, "crop_size needs height and width"))
                }
            },
        };
        let resample = match &self.resample {
            None | Some(Value::Null) => d.resample,
            Some(v) => Resample::from_value(v, origin)?,
        };
        let image_mean = match &self.image_mean {
            None | Some(Value::Null) => d.image_mean,
            Some(v) => parse_triple(v, "image_mean", origin)?,
        };
        let image_std = match &self.image_std {
            None | Some(Value::Null) => d.image_std,
            Some(v) => parse_triple(v, "image_std", origin)?,
        };
        Ok(ProcessorConfig {
            family,
            image_processor_type: self.image_processor_type,
            processor_class: self.processor_class,
            do_resize: self.do_resize.unwrap_or(d.do_resize),
            size,
            resample,
            do_center_crop: self.do_center_crop.unwrap_or(d.do_center_crop),
            crop_size,
            do_rescale: self.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: self.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: self.do_normalize.unwrap_or(d.do_normalize),
            image_mean,
            image_std,
            do_convert_rgb: self.do_convert_rgb.unwrap_or(d.do_convert_rgb),
        })
    }
}

/// Reads a size the ways the reference's `get_size_dict` accepts it.
fn parse_size(
    v: &Value,
    default_to_square: bool,
    field: &str,
    origin: &str,
) -> Result<ResizeTarget> {
    let bad = |why: &str| Error::config(origin, format!("{field} {v}: {why}"));
    let positive = |x: &Value| -> Result<usize> {
        x.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| bad("sizes must be positive integers"))
    };
    match v {
        Value::Number(_) => {
            let n = positive(v)?;
            Ok(if default_to_square {
                ResizeTarget::Exact {
                    height: n,
                    width: n,
                }
            } else {
                ResizeTarget::ShortestEdge(n)
            })
        }
        Value::Array(items) if items.len() == 2 => Ok(ResizeTarget::Exact {
            height: positive(&items[0])?,
            width: positive(&items[1])?,
        }),
        Value::Object(map) => {
            let get = |k: &str| map.get(k).filter(|x| !x.is_null());
            if get("longest_edge").is_some() || get("max_height").is_some() {
                return Err(bad("longest_edge / max_height resizing is not supported by CLIP or BLIP processors"));
            }
            match (get("shortest_edge"), get("height"), get("width")) {
                (Some(s), None, None) => Ok(ResizeTarget::ShortestEdge(positive(s)?)),
                (None, Some(h), Some(w)) => Ok(ResizeTarget::Exact {
                    height: positive(h)?,
                    width: positive(w)?,
                }),
                _ => Err(bad(
                    "expected {\"shortest_edge\"} or {\"height\", \"width\"}",
                )),
            }
        }
        _ => Err(bad("expected an integer, [height, width] or an object")),
    }
}

/// Mean and std may be one number for all channels or one per channel.
fn parse_triple(v: &Value, field: &str, origin: &str) -> Result<[f64; 3]> {
    let bad = || {
        Error::config(
            origin,
            format!("{field} {v}: expected a number or 3 numbers"),
        )
    };
    match v {
        Value::Number(n) => n.as_f64().map(|x| [x; 3]).ok_or_else(bad),
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item.as_f64().ok_or_else(bad)?;
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}
