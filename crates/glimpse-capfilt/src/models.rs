//! The two models of CapFilt as small traits, and their adapters over glimpse-models'
//! [`Pipeline`]: any model with the caption capability can be the captioner, any with
//! an ITM head the filter. Tests drive the job with fakes.

use glimpse_models::capability::Capability;
use glimpse_models::pipeline::Pipeline;
use glimpse_models::registry::classes_with;
use image::RgbImage;

use crate::error::{Error, Result, Role};
use crate::options::CapfiltOptions;

/// Writes synthetic captions.
pub trait Captioner {
    /// Names the model and its weights (recorded in the output directory).
    fn id(&self) -> &str;
    /// `opts.captions_per_image` captions for each image (image-major), without the
    /// prompt, drawn with `seed`.
    fn caption(
        &self,
        images: &[RgbImage],
        opts: &CapfiltOptions,
        seed: u64,
    ) -> Result<Vec<Vec<String>>>;

    /// Why this model cannot take `image` (its preprocessing would make it too
    /// large), or `Ok`; such a sample is skipped rather than failing the shard.
    fn check_image(&self, _image: &RgbImage) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Scores image-text pairs with an ITM head.
pub trait Filter {
    /// Names the model and its weights (recorded in the output directory).
    fn id(&self) -> &str;
    /// The ITM match probability of `image` with each of `texts` (none blank).
    fn itm(&self, image: &RgbImage, texts: &[&str]) -> Result<Vec<f32>>;

    /// As [`Captioner::check_image`].
    fn check_image(&self, _image: &RgbImage) -> std::result::Result<(), String> {
        Ok(())
    }
}

fn check_size(pipeline: &Pipeline, image: &RgbImage) -> std::result::Result<(), String> {
    pipeline
        .processor()
        .check_size(image.width() as usize, image.height() as usize)
        .map_err(|e| e.to_string())
}

/// A loaded captioning model.
pub struct PipelineCaptioner {
    pipeline: Pipeline,
    id: String,
    /// Start token and prompt, in the captioner's tokens.
    prompt_len: usize,
}

fn model_error(role: Role, id: &str, msg: impl Into<String>) -> Error {
    Error::Model {
        role,
        model: id.to_string(),
        msg: msg.into(),
    }
}

impl PipelineCaptioner {
    /// Refuses a model without the caption capability, and lengths that leave no room
    /// after the prompt, before any work.
    pub fn new(pipeline: Pipeline, id: impl Into<String>, opts: &CapfiltOptions) -> Result<Self> {
        let id = id.into();
        if pipeline.as_caption().is_none() {
            return Err(model_error(
                Role::Captioner,
                &id,
                format!(
                    "is a {}, which does not caption; the captioner must be one of {}",
                    pipeline.architecture().class_name(),
                    classes_with(Capability::Caption)
                ),
            ));
        }
        let prompt_len = match opts.prompt.trim() {
            "" => 1,
            p => {
                let ids = pipeline
                    .tokenizer()
                    .encode(p, true)
                    .map_err(|e| model_error(Role::Captioner, &id, e.to_string()))?;
                // `[CLS] ... [SEP]` becomes `[DEC] ...`: the same count less one.
                ids.len().saturating_sub(1).max(1)
            }
        };
        opts.generation_config(prompt_len, 0)?;
        Ok(PipelineCaptioner {
            pipeline,
            id,
            prompt_len,
        })
    }
}

impl Captioner for PipelineCaptioner {
    fn id(&self) -> &str {
        &self.id
    }

    fn caption(
        &self,
        images: &[RgbImage],
        opts: &CapfiltOptions,
        seed: u64,
    ) -> Result<Vec<Vec<String>>> {
        let err = |e: glimpse_models::Error| model_error(Role::Captioner, &self.id, e.to_string());
        // BLIP's CapFilt settings as given: the model's recommended decoding
        // (`no_repeat_ngram_size`, a length penalty) is not applied.
        let gen = self
            .pipeline
            .generation_ids(opts.generation_config(self.prompt_len, seed)?);
        let prompt = Some(opts.prompt.as_str()).filter(|p| !p.trim().is_empty());
        let out = self.pipeline.caption(images, prompt, &gen).map_err(err)?;
        let k = opts.captions_per_image;
        if out.len() != images.len() * k {
            return Err(model_error(
                Role::Captioner,
                &self.id,
                format!(
                    "returned {} captions for {} images x {k}",
                    out.len(),
                    images.len()
                ),
            ));
        }
        let tokenizer = self.pipeline.tokenizer();
        let texts = out
            .iter()
            .map(|g| {
                tokenizer
                    .decode(&g.token_ids, true)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| model_error(Role::Captioner, &self.id, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(texts.chunks(k).map(<[String]>::to_vec).collect())
    }

    fn check_image(&self, image: &RgbImage) -> std::result::Result<(), String> {
        check_size(&self.pipeline, image)
    }
}

/// A loaded model with an ITM head.
pub struct PipelineFilter {
    pipeline: Pipeline,
    id: String,
}

impl PipelineFilter {
    /// Refuses a model without the match capability or without an ITM head (CLIP
    /// matches by cosine only), before any work: one blank image is scored to ask.
    pub fn new(pipeline: Pipeline, id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let class = pipeline.architecture().class_name();
        if pipeline.as_match().is_none() {
            return Err(model_error(
                Role::Filter,
                &id,
                format!(
                    "is a {class}, which does not match images with texts; the filter must \
                     have an ITM head (BlipForImageTextRetrieval, Blip2ForImageTextRetrieval)"
                ),
            ));
        }
        let (h, w) = pipeline.processor().output_size();
        let probe = RgbImage::from_pixel(w as u32, h as u32, image::Rgb([128, 128, 128]));
        let scores = pipeline
            .match_scores(&probe, &["a"])
            .map_err(|e| model_error(Role::Filter, &id, e.to_string()))?;
        if scores.itm.is_none() {
            return Err(model_error(
                Role::Filter,
                &id,
                format!(
                    "is a {class}, which has no ITM head (it scores by cosine only); the \
                     filter must be a BlipForImageTextRetrieval or Blip2ForImageTextRetrieval"
                ),
            ));
        }
        Ok(PipelineFilter { pipeline, id })
    }
}

impl Filter for PipelineFilter {
    fn id(&self) -> &str {
        &self.id
    }

    fn itm(&self, image: &RgbImage, texts: &[&str]) -> Result<Vec<f32>> {
        let err = |e: glimpse_models::Error| model_error(Role::Filter, &self.id, e.to_string());
        let scores = self.pipeline.match_scores(image, texts).map_err(err)?;
        let itm = scores
            .itm
            .ok_or_else(|| model_error(Role::Filter, &self.id, "returned no ITM scores"))?;
        glimpse_models::finite::check_finite(&self.id, "ITM probabilities", &itm).map_err(err)?;
        if itm.len() != texts.len() {
            return Err(model_error(
                Role::Filter,
                &self.id,
                format!("returned {} scores for {} texts", itm.len(), texts.len()),
            ));
        }
        Ok(itm)
    }

    fn check_image(&self, image: &RgbImage) -> std::result::Result<(), String> {
        check_size(&self.pipeline, image)
    }
}
