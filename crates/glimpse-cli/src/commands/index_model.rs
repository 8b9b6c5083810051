//! glimpse-models' `Embed` capability as glimpse-index's [`Embedder`], and the model id
//! an index records: the model's name and a fingerprint of its config and weights, so
//! that the same files give the same id wherever they lie and other weights do not.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use glimpse_index::job::BoxError;
use glimpse_index::Embedder;
use glimpse_models::pipeline::Pipeline;
use image::RgbImage;

use super::{device, load_quantized, model_name, Bundled};
use crate::cli::ModelArgs;
use glimpse_nn::quant::Quant;

/// The end of an embedding model's id when its encoders run in 8 bits (`--quantize q8`).
pub const Q8_SUFFIX: &str = "+q8";

/// A loaded model that embeds images and texts.
pub struct PipelineEmbedder {
    pub pipeline: Pipeline,
    /// The model as named on the command line (a directory is made absolute).
    pub model: String,
    id: String,
    dim: usize,
    device: Device,
}

/// `NAME@FINGERPRINT` (see [`glimpse_models::fingerprint`]).
pub fn model_id(model: &str) -> Result<String> {
    glimpse_models::fingerprint::model_id(model).with_context(|| format!("model `{model}`"))
}

impl PipelineEmbedder {
    /// Loads `--model` (the bundled CLIP without it), with 8-bit encoders when `quantize`
    /// is `q8`, and checks that it can embed. The id of an 8-bit model ends in
    /// [`Q8_SUFFIX`], so an index names how its vectors were made.
    pub fn load(args: &ModelArgs, quantize: Option<Quant>) -> Result<Self> {
        let mut model = model_name(args, Bundled::Clip)?;
        if Path::new(&model).is_dir() {
            model = std::fs::canonicalize(&model)?.display().to_string();
        }
        let mut id = model_id(&model)?;
        match quantize {
            None => {}
            Some(Quant::Q8) => id.push_str(Q8_SUFFIX),
            Some(q) => bail!("--quantize {q}: embeddings take q8 (8-bit encoders) only"),
        }
        let pipeline = load_quantized(args, Bundled::Clip, quantize)?;
        if pipeline.as_embed().is_none() {
            bail!(
                "model `{model}` ({}) cannot embed images and texts; use a CLIP model or \
                 BLIP's retrieval model",
                pipeline.architecture().class_name()
            );
        }
        let (h, w) = pipeline.processor().output_size();
        let probe = RgbImage::new(w as u32, h as u32);
        let dim = pipeline.image_embeds(&[probe])?.dim(1)?;
        Ok(PipelineEmbedder {
            pipeline,
            model,
            id,
            dim,
            device: device(&args.device)?,
        })
    }
}

impl Embedder for PipelineEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn preprocess(&self, image: &RgbImage) -> std::result::Result<Vec<f32>, BoxError> {
        let p = self.pipeline.processor();
        p.check_size(image.width() as usize, image.height() as usize)?;
        Ok(p.preprocess(image)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn embed_images(&self, pixels: &[Vec<f32>]) -> std::result::Result<Vec<Vec<f32>>, BoxError> {
        let (h, w) = self.pipeline.processor().output_size();
        if let Some(p) = pixels.iter().find(|p| p.len() != 3 * h * w) {
            return Err(
                format!("a preprocessed image has {} values, not 3x{h}x{w}", p.len()).into(),
            );
        }
        let flat: Vec<f32> = pixels.concat();
        let batch = Tensor::from_vec(flat, (pixels.len(), 3, h, w), &self.device)?;
        let embed = self.pipeline.as_embed().ok_or("the model cannot embed")?;
        Ok(embed.image_embeds(&batch)?.to_vec2::<f32>()?)
    }

    fn embed_texts(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, BoxError> {
        Ok(self.pipeline.text_embeds(texts)?.to_vec2::<f32>()?)
    }
}
