//! One entry point over every model family: load whatever a `--model` names, then
//! embed, match, classify, caption or answer with it.
//!
//! The CLI, and later the server and the agent, only call this module, so a task
//! ("caption these images") behaves the same whoever asks. Each task checks that the
//! loaded model can do it and otherwise says which class would.

use candle_core::{DType, Device, Tensor, D};
use glimpse_data::{ImageProcessor, TextTokenizer};
use glimpse_generate::GenerationConfig;
use glimpse_nn::quant::{Quant, QuantReport};
use image::RgbImage;
use serde::Deserialize;

use crate::blip::{
    BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering,
};
use crate::blip2::{vqa_prompt, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval};
use crate::checkpoint::ModelFiles;
use crate::clip::ClipModel;
use crate::llava::{ChatMessage, LlavaForConditionalGeneration, LlavaProcessor};
use crate::{Error, Result};

/// The model classes Glimpse can run, named as in `config.json` `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Clip,
    BlipCaption,
    BlipRetrieval,
    BlipVqa,
    Blip2Generation,
    Blip2Retrieval,
    Llava,
}

impl Architecture {
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Clip => "CLIPModel",
            Self::BlipCaption => "BlipForConditionalGeneration",
            Self::BlipRetrieval => "BlipForImageTextRetrieval",
            Self::BlipVqa => "BlipForQuestionAnswering",
            Self::Blip2Generation => "Blip2ForConditionalGeneration",
            Self::Blip2Retrieval => "Blip2ForImageTextRetrieval",
            Self::Llava => "LlavaForConditionalGeneration",
        }
    }

    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "CLIPModel" => Self::Clip,
            "BlipForConditionalGeneration" => Self::BlipCaption,
            "BlipForImageTextRetrieval" => Self::BlipRetrieval,
            "BlipForQuestionAnswering" => Self::BlipVqa,
            "Blip2ForConditionalGeneration" => Self::Blip2Generation,
            "Blip2ForImageTextRetrieval" => Self::Blip2Retrieval,
            "LlavaForConditionalGeneration" => Self::Llava,
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct ArchitectureProbe {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

/// Which class a checkpoint holds: `architectures` first, then `model_type`.
pub fn detect_architecture(files: &ModelFiles) -> Result<Architecture> {
    let probe: ArchitectureProbe = files.read_config()?;
    if let Some(arch) = probe
        .architectures
        .iter()
        .find_map(|a| Architecture::from_class(a))
    {
        return Ok(arch);
    }
    let config_err = |msg: String| Error::Config {
        path: files.config.clone(),
        msg,
    };
    match probe.model_type.as_deref() {
        Some("clip") => Ok(Architecture::Clip),
        Some("blip") => Err(config_err(
            "model_type is \"blip\" but `architectures` does not say which BLIP head \
             (BlipForConditionalGeneration, BlipForImageTextRetrieval or BlipForQuestionAnswering)"
                .into(),
        )),
        other => Err(config_err(format!(
            "unsupported model (architectures {:?}, model_type {:?}); Glimpse runs CLIPModel, \
             BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering, \
             Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval and \
             LlavaForConditionalGeneration",
            probe.architectures, other
        ))),
    }
}

enum Loaded {
    Clip(ClipModel),
    BlipCaption(BlipForConditionalGeneration),
    BlipRetrieval(BlipForImageTextRetrieval),
    BlipVqa(BlipForQuestionAnswering),
    Blip2Generation(Blip2ForConditionalGeneration),
    Blip2Retrieval(Blip2ForImageTextRetrieval),
    Llava(Box<LlavaForConditionalGeneration>, Box<LlavaProcessor>),
}

/// Similarities of one image against several texts.
#[derive(Debug, Clone)]
pub struct MatchScores {
    /// Cosine similarity of the projected, normalised embeddings, one per text.
    pub itc: Vec<f32>,
    /// Match probability from the ITM head, where the model has one.
    pub itm: Option<Vec<f32>>,
}

/// Generated text and the ids it was decoded from (no prompt, no start token).
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub token_ids: Vec<u32>,
}

/// A loaded model with its tokenizer and image processor.
pub struct Pipeline {
    model: Loaded,
    arch: Architecture,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    device: Device,
    name: String,
}

impl Pipeline {
    /// Loads `model` (a directory or hub id) with its tokenizer and processor.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let files = ModelFiles::resolve(model)?;
        let arch = detect_architecture(&files)?;
        let missing = |what: &str| Error::Model {
            model: model.to_string(),
            msg: format!("no {what} in {}", files.dir.display()),
        };
        let tokenizer = TextTokenizer::from_file(
            files
                .tokenizer
                .as_ref()
                .ok_or_else(|| missing("tokenizer.json"))?,
        )?;
        let processor = ImageProcessor::from_file(
            files
                .preprocessor
                .as_ref()
                .ok_or_else(|| missing("preprocessor_config.json"))?,
        )?;
        let loaded = match arch {
            Architecture::Clip => Loaded::Clip(ClipModel::load(&files, device)?),
            Architecture::BlipCaption => {
                Loaded::BlipCaption(BlipForConditionalGeneration::load(&files, device)?)
            }
            Architecture::BlipRetrieval => {
                Loaded::BlipRetrieval(BlipForImageTextRetrieval::load(&files, device)?)
            }
            Architecture::BlipVqa => {
                Loaded::BlipVqa(BlipForQuestionAnswering::load(&files, device)?)
            }
            Architecture::Blip2Generation => {
                Loaded::Blip2Generation(Blip2ForConditionalGeneration::load(&files, device)?)
            }
            Architecture::Blip2Retrieval => {
                Loaded::Blip2Retrieval(Blip2ForImageTextRetrieval::load(&files, device)?)
            }
            Architecture::Llava => {
                let model = LlavaForConditionalGeneration::load(&files, device)?;
                let processor = LlavaProcessor::load(&files, model.config())?;
                Loaded::Llava(Box::new(model), Box::new(processor))
            }
        };
        Ok(Self {
            model: loaded,
            arch,
            tokenizer,
            processor,
            device: device.clone(),
            name: model.to_string(),
        })
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// Quantises the language model of a BLIP-2 (OPT) or LLaVA model for decoding.
    pub fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        match &mut self.model {
            Loaded::Blip2Generation(m) => m.quantize_language_model(quant),
            Loaded::Llava(m, _) => m.quantize_language_model(quant),
            _ => Err(self.unsupported(
                "quantize",
                "a Blip2ForConditionalGeneration (with OPT) or LlavaForConditionalGeneration",
            )),
        }
    }

    fn unsupported(&self, task: &str, needs: &str) -> Error {
        Error::Model {
            model: self.name.clone(),
            msg: format!("is a {}; `{task}` needs {needs}", self.arch.class_name()),
        }
    }

    /// `[n, 3, H, W]` pixel values for a batch of decoded images.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        Ok(self.processor.preprocess_batch(images, &self.device)?)
    }

    fn encode_texts(&self, texts: &[&str]) -> Result<glimpse_data::TextBatch> {
        for t in texts {
            if t.trim().is_empty() {
                return Err(Error::Model {
                    model: self.name.clone(),
                    msg: "empty text: every text must contain at least one non-space character"
                        .into(),
                });
            }
        }
        Ok(self
            .tokenizer
            .encode_batch(texts, true, self.max_text_len(), &self.device)?)
    }

    fn max_text_len(&self) -> Option<usize> {
        match &self.model {
            Loaded::Clip(m) => Some(m.config().text_config.max_position_embeddings),
            Loaded::BlipCaption(m) => Some(m.config().text_config.max_position_embeddings),
            Loaded::BlipRetrieval(m) => Some(m.config().text_config.max_position_embeddings),
            Loaded::BlipVqa(m) => Some(m.config().text_config.max_position_embeddings),
            Loaded::Blip2Retrieval(m) => Some(m.config().qformer_config.max_position_embeddings),
            // Language models check their own limits against the cache.
            Loaded::Blip2Generation(_) | Loaded::Llava(..) => None,
        }
    }

    /// Projected (not normalised) image embeddings `[n, dim]`.
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        let pixels = self.pixel_values(images)?;
        match &self.model {
            Loaded::Clip(m) => m.get_image_features(&pixels),
            Loaded::BlipRetrieval(m) => m.image_embeds(&pixels),
            _ => Err(self.unsupported("embed", "a CLIPModel or BlipForImageTextRetrieval")),
        }
    }

    /// Projected (not normalised) text embeddings `[n, dim]`.
    pub fn text_embeds(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.encode_texts(texts)?;
        match &self.model {
            Loaded::Clip(m) => m.get_text_features(&batch.input_ids, &batch.attention_mask),
            Loaded::BlipRetrieval(m) => m.text_embeds(&batch.input_ids, &batch.attention_mask),
            _ => Err(self.unsupported("embed", "a CLIPModel or BlipForImageTextRetrieval")),
        }
    }

    /// ITC cosine (and ITM probability where available) of one image against `texts`.
    pub fn match_scores(&self, image: &RgbImage, texts: &[&str]) -> Result<MatchScores> {
        let pixels = self.pixel_values(std::slice::from_ref(image))?; // [1, 3, H, W]
        match &self.model {
            Loaded::Clip(_) => {
                let itc = cosine(
                    &self.image_embeds(std::slice::from_ref(image))?,
                    &self.text_embeds(texts)?,
                )?;
                Ok(MatchScores {
                    itc: itc.squeeze(0)?.to_vec1()?,
                    itm: None,
                })
            }
            Loaded::BlipRetrieval(m) => {
                let batch = self.encode_texts(texts)?;
                let image_embeds = m.image_embeds(&pixels)?; // [1, E]
                let text_embeds = m.text_embeds(&batch.input_ids, &batch.attention_mask)?; // [n, E]
                let itc = cosine(&image_embeds, &text_embeds)?.squeeze(0)?.to_vec1()?;
                let itm = m.itm_probs(&pixels, &batch.input_ids, &batch.attention_mask)?;
                Ok(MatchScores {
                    itc,
                    itm: Some(itm.to_vec1()?),
                })
            }
            Loaded::Blip2Retrieval(m) => {
                // ITC is the best of the query embeddings, as the reference scores it.
                let batch = self.encode_texts(texts)?;
                let mask = Some(&batch.attention_mask);
                let itc = m.itc(&pixels, &batch.input_ids, mask)?.squeeze(0)?; // [n]
                let itm = m.itm_probs(&pixels, &batch.input_ids, mask)?; // [n]
                Ok(MatchScores {
                    itc: itc.to_dtype(DType::F32)?.to_vec1()?,
                    itm: Some(itm.to_vec1()?),
                })
            }
            _ => Err(self.unsupported(
                "match",
                "a CLIPModel, BlipForImageTextRetrieval or Blip2ForImageTextRetrieval",
            )),
        }
    }

    /// Zero-shot class probabilities of one image over `labels` put into `template`.
    pub fn classify(&self, image: &RgbImage, labels: &[&str], template: &str) -> Result<Vec<f32>> {
        let Loaded::Clip(m) = &self.model else {
            return Err(self.unsupported("classify", "a CLIPModel"));
        };
        if !template.contains("{}") {
            return Err(Error::Model {
                model: self.name.clone(),
                msg: format!("template {template:?} has no `{{}}` for the label"),
            });
        }
        let prompts: Vec<String> = labels.iter().map(|l| template.replace("{}", l)).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let image_embeds = self.image_embeds(std::slice::from_ref(image))?;
        let text_embeds = self.text_embeds(&prompts)?;
        let logits = (cosine(&image_embeds, &text_embeds)? * m.logit_scale_exp()? as f64)?; // [1, n]
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(probs.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Captions for a batch of images; `prompt` starts every caption (for LLaVA it is
    /// the instruction, by default a request for a one-sentence description).
    pub fn caption(
        &self,
        images: &[RgbImage],
        prompt: Option<&str>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        let prompt = prompt.filter(|p| !p.trim().is_empty());
        let pixels = self.pixel_values(images)?;
        match &self.model {
            Loaded::BlipCaption(m) => {
                let prompt_ids = prompt.map(|p| self.tokenizer.encode(p, true)).transpose()?;
                let ids = m.generate(&pixels, prompt_ids.as_deref(), gen)?;
                // A prompted caption reads as one sentence: decode the prompt with the
                // continuation (as the reference decodes the whole sequence), but
                // report only the generated ids.
                let start = m.caption_prompt(prompt_ids.as_deref());
                ids.into_iter()
                    .map(|token_ids| {
                        let full: Vec<u32> = start.iter().chain(&token_ids).copied().collect();
                        let text = self.tokenizer.decode(&full, true)?;
                        Ok(Generated { text, token_ids })
                    })
                    .collect()
            }
            Loaded::Blip2Generation(m) => {
                let prompt_ids = prompt.map(|p| self.tokenizer.encode(p, true)).transpose()?;
                let ids = m.generate(&pixels, prompt_ids.as_deref(), gen)?;
                let prefix = prompt
                    .map(|p| format!("{} ", p.trim_end()))
                    .unwrap_or_default();
                self.decode_all(ids)?
                    .into_iter()
                    .map(|g| {
                        Ok(Generated {
                            text: format!("{prefix}{}", g.text.trim_start()),
                            ..g
                        })
                    })
                    .collect()
            }
            Loaded::Llava(m, p) => {
                let instruction = prompt.unwrap_or(LLAVA_CAPTION_INSTRUCTION);
                let (_, ids) = p.prompt(&[ChatMessage::user(instruction, true)], true)?;
                let n = images.len();
                let rows = Tensor::new(ids, &self.device)?
                    .unsqueeze(0)?
                    .repeat((n, 1))?; // [n, t]
                let eos = gen.eos_token_ids.clone();
                m.generate(&pixels, &rows, gen)?
                    .into_iter()
                    .map(|token_ids| {
                        Ok(Generated {
                            text: p.decode_reply(&token_ids, &eos)?,
                            token_ids,
                        })
                    })
                    .collect()
            }
            _ => Err(self.unsupported(
                "caption",
                "a BlipForConditionalGeneration, Blip2ForConditionalGeneration or \
                 LlavaForConditionalGeneration",
            )),
        }
    }

    /// Answer to `question` about one image (BLIP-2 uses the zero-shot VQA prompt
    /// "Question: {} Answer:"; LLaVA one chat turn).
    pub fn ask(
        &self,
        image: &RgbImage,
        question: &str,
        gen: &GenerationConfig,
    ) -> Result<Generated> {
        if question.trim().is_empty() {
            return Err(Error::Model {
                model: self.name.clone(),
                msg: "empty question".into(),
            });
        }
        let pixels = self.pixel_values(std::slice::from_ref(image))?;
        let ids = match &self.model {
            Loaded::BlipVqa(m) => {
                let batch = self.encode_texts(&[question])?;
                m.generate(&pixels, &batch.input_ids, &batch.attention_mask, gen)?
            }
            Loaded::Blip2Generation(m) => {
                let prompt = self.tokenizer.encode(&vqa_prompt(question.trim()), true)?;
                m.generate(&pixels, Some(&prompt), gen)?
            }
            Loaded::Llava(m, p) => {
                let (_, ids) = p.prompt(&[ChatMessage::user(question, true)], true)?;
                let rows = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // [1, t]
                let token_ids = m.generate(&pixels, &rows, gen)?.remove(0);
                let text = p.decode_reply(&token_ids, &gen.eos_token_ids)?;
                return Ok(Generated { text, token_ids });
            }
            _ => {
                return Err(self.unsupported(
                    "ask",
                    "a BlipForQuestionAnswering, Blip2ForConditionalGeneration or \
                     LlavaForConditionalGeneration",
                ))
            }
        };
        let mut out = self.decode_all(ids)?;
        let mut answer = out.remove(0);
        answer.text = answer.text.trim().to_string();
        Ok(answer)
    }

    /// Generation defaults of this model (end, pad ids) on top of `gen`.
    pub fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        match &self.model {
            Loaded::BlipCaption(m) => m.generation_config(&gen),
            Loaded::BlipVqa(m) => GenerationConfig {
                eos_token_ids: vec![m.config().text_config.sep_token_id],
                pad_token_id: m.config().text_config.pad_token_id,
                ..gen
            },
            Loaded::Blip2Generation(m) => m.generation_config(&gen),
            Loaded::Llava(m, _) => m.generation_config(&gen),
            _ => gen,
        }
    }

    fn decode_all(&self, ids: Vec<Vec<u32>>) -> Result<Vec<Generated>> {
        ids.into_iter()
            .map(|token_ids| {
                let text = self.tokenizer.decode(&token_ids, true)?;
                Ok(Generated { text, token_ids })
            })
            .collect()
    }
}

/// What `caption` asks a chat model when no `--prompt` is given.
pub const LLAVA_CAPTION_INSTRUCTION: &str = "Describe the image in one sentence.";

/// Cosine similarity of every row of `a` `[n, d]` with every row of `b` `[m, d]` -> `[n, m]`.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = l2_normalize(&a.to_dtype(DType::F32)?)?;
    let b = l2_normalize(&b.to_dtype(DType::F32)?)?;
    Ok(a.matmul(&b.t()?)?)
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
