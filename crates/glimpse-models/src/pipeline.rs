//! One entry point over every model family: load whatever a `--model` names, then
//! embed, match, classify, caption, answer or chat with it.
//!
//! The CLI, and later the server and the agent, only call this module, so a task
//! ("caption these images") behaves the same whoever asks. The pipeline owns the
//! checkpoint's tokenizer and image processor, turns images and texts into model
//! inputs, and hands them to the model's [`capability`](crate::capability) for the
//! task; a model without it gives an error that names its class and the classes that
//! have it.

use candle_core::{Device, Tensor};
use glimpse_data::{ImageProcessor, TextBatch, TextTokenizer};
use glimpse_generate::{GenerationConfig, ModelDecoding};
use glimpse_nn::linears::Int8Report;
use glimpse_nn::quant::{Quant, QuantReport};
use image::RgbImage;
use std::path::Path;

use crate::capability::{
    Answer, Capability, Caption, Chat, ChatRows, ChatTurn, Classify, Conversation, Embed, Match,
    Model, OnStep,
};
use crate::checkpoint::ModelFiles;
use crate::registry::{self, classes_with};
use crate::{Error, Result};

pub use crate::capability::{cosine, ChatRequest, Generated, MatchScores};
pub use crate::llava::CAPTION_INSTRUCTION as LLAVA_CAPTION_INSTRUCTION;
pub use crate::registry::{detect_architecture, Architecture};

/// A loaded model with its tokenizer and image processor.
pub struct Pipeline {
    model: Box<dyn Model>,
    arch: Architecture,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    device: Device,
    name: String,
    /// What the directory's `generation_config.json` recommends for decoding.
    decoding: ModelDecoding,
}

/// Reads the decoding settings `dir/generation_config.json` recommends; none when the
/// file is absent, an error naming the file when it cannot be used.
fn model_decoding(dir: &Path) -> Result<ModelDecoding> {
    let path = dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelDecoding::default()),
        Err(source) => return Err(Error::Io { path, source }),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    ModelDecoding::from_json(&v).map_err(|e| Error::Config {
        path,
        msg: e.to_string(),
    })
}

/// Refuses a processor whose images the vision tower cannot take, naming the processor
/// file and its key, before any image is read (the tower would only say that
/// `pixel_values` have the wrong size). Configs without `vision_config.image_size`
/// are left to the tower.
fn check_processor_fits(
    processor: &ImageProcessor,
    path: &Path,
    config: &serde_json::Value,
) -> Result<()> {
    let Some(s) = config
        .pointer("/vision_config/image_size")
        .and_then(serde_json::Value::as_u64)
    else {
        return Ok(());
    };
    let (h, w) = processor.output_size();
    if (h as u64, w as u64) == (s, s) {
        return Ok(());
    }
    let c = &processor.config;
    let key = if c.do_center_crop && c.crop_size.is_some() {
        "crop_size"
    } else {
        "size"
    };
    Err(Error::Config {
        path: path.to_path_buf(),
        msg: format!(
            "`{key}` gives {h}x{w} pixel_values but the model takes {s}x{s} images \
             (vision_config.image_size in config.json)"
        ),
    })
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
        let processor_path = files
            .preprocessor
            .as_ref()
            .ok_or_else(|| missing("preprocessor_config.json"))?;
        let processor = ImageProcessor::from_file(processor_path)?;
        check_processor_fits(&processor, processor_path, &files.config_json()?)?;
        let decoding = model_decoding(&files.dir)?;
        Ok(Self {
            model: registry::load(arch, &files, device)?,
            arch,
            tokenizer,
            processor,
            device: device.clone(),
            name: model.to_string(),
            decoding,
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

    /// The loaded model, for capabilities the convenience methods do not cover.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    pub fn as_embed(&self) -> Option<&dyn Embed> {
        self.model.as_embed()
    }

    pub fn as_classify(&self) -> Option<&dyn Classify> {
        self.model.as_classify()
    }

    pub fn as_match(&self) -> Option<&dyn Match> {
        self.model.as_match()
    }

    pub fn as_caption(&self) -> Option<&dyn Caption> {
        self.model.as_caption()
    }

    pub fn as_answer(&self) -> Option<&dyn Answer> {
        self.model.as_answer()
    }

    pub fn as_chat(&self) -> Option<&dyn Chat> {
        self.model.as_chat()
    }

    /// Quantises the language model of a BLIP-2 (OPT) or LLaVA model for decoding.
    pub fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        match self.model.as_quantize() {
            Some(m) => m.quantize_language_model(quant),
            None => Err(self.unsupported(
                "quantize",
                "a Blip2ForConditionalGeneration (with OPT) or LlavaForConditionalGeneration"
                    .into(),
            )),
        }
    }

    /// Rounds the encoders' linear layers to 8 bits for the integer kernels (the vision
    /// and text towers, BLIP's text decoder, BLIP-2's Q-Former, LLaVA's projector).
    pub fn quantize_encoders(&mut self) -> Result<Int8Report> {
        let name = self.name.clone();
        match self.model.as_linears() {
            Some(m) => glimpse_nn::linears::quantize_int8(m).map_err(|e| Error::Model {
                model: name,
                msg: format!("8-bit rounding failed: {e}"),
            }),
            None => Err(self.unsupported("--quantize q8", "a model with encoders".into())),
        }
    }

    fn unsupported(&self, task: &str, needs: String) -> Error {
        Error::Model {
            model: self.name.clone(),
            msg: format!("is a {}; `{task}` needs {needs}", self.arch.class_name()),
        }
    }

    /// `capability` of the model, or an error naming the classes that have it.
    fn need<'a, T: ?Sized>(
        &self,
        found: Option<&'a T>,
        task: &str,
        capability: Capability,
    ) -> Result<&'a T> {
        found.ok_or_else(|| self.unsupported(task, classes_with(capability)))
    }

    /// `[n, 3, H, W]` pixel values for a batch of decoded images.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        Ok(self.processor.preprocess_batch(images, &self.device)?)
    }

    fn encode_texts(&self, texts: &[&str]) -> Result<TextBatch> {
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
            .encode_batch(texts, true, self.model.max_text_len(), &self.device)?)
    }

    /// Projected (not normalised) image embeddings `[n, dim]`.
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        let pixels = self.pixel_values(images)?;
        let m = self.need(self.as_embed(), "embed", Capability::Embed)?;
        m.image_embeds(&pixels)
    }

    /// Projected (not normalised) text embeddings `[n, dim]`.
    pub fn text_embeds(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.encode_texts(texts)?;
        let m = self.need(self.as_embed(), "embed", Capability::Embed)?;
        m.text_embeds(&batch)
    }

    /// ITC cosine (and ITM probability where available) of one image against `texts`.
    pub fn match_scores(&self, image: &RgbImage, texts: &[&str]) -> Result<MatchScores> {
        let pixels = self.pixel_values(std::slice::from_ref(image))?; // [1, 3, H, W]
        let m = self.need(self.as_match(), "match", Capability::Match)?;
        m.match_scores(&pixels, &self.encode_texts(texts)?)
    }

    /// Zero-shot class probabilities of one image over `labels` put into `template`.
    pub fn classify(&self, image: &RgbImage, labels: &[&str], template: &str) -> Result<Vec<f32>> {
        let m = self.need(self.as_classify(), "classify", Capability::Classify)?;
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
        let m = self.need(self.as_caption(), "caption", Capability::Caption)?;
        m.caption(&self.tokenizer, &pixels, prompt, gen)
    }

    /// Captions of a batch that images join while it decodes (continuous batching):
    /// `rows.admit` gives the first images and, between steps, those that arrived
    /// since; each caption goes to `rows.finished` as soon as it ends and equals the
    /// image's caption alone. `Ok(false)` when the model's family cannot add rows to a
    /// running batch (then `rows` is never called). An error ends the batch: captions
    /// not yet finished are the caller's to answer.
    pub fn caption_joining(
        &self,
        prompt: Option<&str>,
        gen: &GenerationConfig,
        rows: &mut dyn ImageRows,
    ) -> Result<bool> {
        let prompt = prompt.filter(|p| !p.trim().is_empty());
        let m = self.need(self.as_caption(), "caption", Capability::Caption)?;
        let mut adapter = Preprocess {
            pipeline: self,
            rows,
        };
        match m.caption_joining(&self.tokenizer, prompt, gen, &mut adapter) {
            None => Ok(false),
            Some(result) => result.map(|()| true),
        }
    }

    /// Replies of a batch that conversations join while it decodes (continuous
    /// batching of chat turns, [`Reply::Chat`], or of answers, [`Reply::Answer`]):
    /// `rows.admit` gives the first ones and, between steps, those that arrived since;
    /// each reply goes to `rows.finished` as soon as it ends and equals the one the
    /// request gets alone ([`Self::start_chat`] with its history and `send`, or
    /// [`Self::ask`]). `Ok(false)` when the model's family cannot add rows to a
    /// running batch (then `rows` is never called). An error ends the batch: replies
    /// not yet finished are the caller's to answer.
    pub fn reply_joining(
        &self,
        reply: Reply,
        gen: &GenerationConfig,
        rows: &mut dyn ConversationRows,
    ) -> Result<bool> {
        let mut adapter = Conversations {
            pipeline: self,
            rows,
        };
        let outcome = match reply {
            Reply::Chat => self
                .need(self.as_chat(), "chat", Capability::Chat)?
                .chat_joining(gen, &mut adapter),
            Reply::Answer => self
                .need(self.as_answer(), "ask", Capability::Answer)?
                .answer_joining(&self.tokenizer, gen, &mut adapter),
        };
        match outcome {
            None => Ok(false),
            Some(result) => result.map(|()| true),
        }
    }

    /// [`Self::caption`] calling `on_step` after every decoding step; `Ok(None)` when
    /// the model's family does not stream (the caller captions without it).
    pub fn caption_stream(
        &self,
        images: &[RgbImage],
        prompt: Option<&str>,
        gen: &GenerationConfig,
        on_step: OnStep<'_>,
    ) -> Result<Option<Vec<Generated>>> {
        let prompt = prompt.filter(|p| !p.trim().is_empty());
        let pixels = self.pixel_values(images)?;
        let m = self.need(self.as_caption(), "caption", Capability::Caption)?;
        m.caption_stream(&self.tokenizer, &pixels, prompt, gen, on_step)
            .transpose()
    }

    /// [`Self::ask`] calling `on_step` after every decoding step; `Ok(None)` when the
    /// model's family does not stream.
    pub fn ask_stream(
        &self,
        image: &RgbImage,
        question: &str,
        gen: &GenerationConfig,
        on_step: OnStep<'_>,
    ) -> Result<Option<Generated>> {
        if question.trim().is_empty() {
            return Err(Error::Model {
                model: self.name.clone(),
                msg: "empty question".into(),
            });
        }
        let pixels = self.pixel_values(std::slice::from_ref(image))?;
        let m = self.need(self.as_answer(), "ask", Capability::Answer)?;
        m.answer_stream(&self.tokenizer, &pixels, question, gen, on_step)
            .transpose()
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
        let m = self.need(self.as_answer(), "ask", Capability::Answer)?;
        m.answer(&self.tokenizer, &pixels, question, gen)
    }

    /// A conversation about the image `pixel_values` (`[1, 3, H, W]`, from
    /// [`Self::pixel_values`]), opened by `system` when given.
    pub fn start_chat(
        &self,
        pixel_values: &Tensor,
        system: Option<&str>,
    ) -> Result<Box<dyn Conversation + '_>> {
        let m = self.need(self.as_chat(), "chat", Capability::Chat)?;
        m.start_chat(pixel_values, system)
    }

    /// Generation defaults of this model on top of `gen`: its end and pad ids, and
    /// where `gen` leaves them neutral, the repetition penalty and
    /// `no_repeat_ngram_size` its `generation_config.json` recommends.
    pub fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        self.decoding.apply(self.model.generation_config(gen))
    }

    /// Only the model's end and pad ids on top of `gen`, not what its
    /// `generation_config.json` recommends: for callers whose decoding settings are
    /// fixed by a method (CapFilt decodes with BLIP's).
    pub fn generation_ids(&self, gen: GenerationConfig) -> GenerationConfig {
        self.model.generation_config(gen)
    }

    /// The decoding settings the model directory recommends.
    pub fn model_decoding(&self) -> ModelDecoding {
        self.decoding
    }
}

/// Images that join a running caption batch ([`Pipeline::caption_joining`]), and where
/// their captions go.
pub trait ImageRows {
    /// With the number of captions decoding now: images that join, one tag each.
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage)>>;

    /// Image `tag`'s caption chose `token`; `false` ends that caption now.
    fn token(&mut self, tag: u64, token: u32) -> bool;

    /// Image `tag`'s caption is done (or could not be made).
    fn finished(&mut self, tag: u64, caption: Result<Generated>);
}

/// Turns joining images into pixel values for the model.
struct Preprocess<'a> {
    pipeline: &'a Pipeline,
    rows: &'a mut dyn ImageRows,
}

impl crate::capability::CaptionRows for Preprocess<'_> {
    fn admit(&mut self, running: usize) -> Option<(Tensor, Vec<u64>)> {
        let group = self.rows.admit(running)?;
        let (tags, images): (Vec<u64>, Vec<RgbImage>) = group.into_iter().unzip();
        match self.pipeline.pixel_values(&images) {
            Ok(pixels) => Some((pixels, tags)),
            Err(e) => {
                let msg = e.to_string();
                for tag in tags {
                    self.rows.finished(
                        tag,
                        Err(Error::Model {
                            model: self.pipeline.name.clone(),
                            msg: msg.clone(),
                        }),
                    );
                }
                None
            }
        }
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.rows.token(tag, token)
    }

    fn finished(&mut self, tag: u64, caption: Result<Generated>) {
        self.rows.finished(tag, caption)
    }
}

/// What a joining batch replies to ([`Pipeline::reply_joining`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// A chat turn of a replayed conversation ([`Capability::Chat`]).
    Chat,
    /// An answer to the request's `user` text as a question ([`Capability::Answer`]).
    Answer,
}

/// Conversations about images that join a running reply batch
/// ([`Pipeline::reply_joining`]), and where their replies go.
pub trait ConversationRows {
    /// With the number of replies decoding now: conversations that join, each with
    /// its image and a tag.
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage, ChatRequest)>>;

    /// Reply `tag` chose `token`; `false` ends that reply now.
    fn token(&mut self, tag: u64, token: u32) -> bool;

    /// Reply `tag` is done (or could not be made).
    fn finished(&mut self, tag: u64, reply: Result<ChatTurn>);
}

/// Turns joining conversations' images into pixel values for the model.
struct Conversations<'a> {
    pipeline: &'a Pipeline,
    rows: &'a mut dyn ConversationRows,
}

impl ChatRows for Conversations<'_> {
    fn admit(&mut self, running: usize) -> Option<(Tensor, Vec<(u64, ChatRequest)>)> {
        let group = self.rows.admit(running)?;
        let mut images = Vec::with_capacity(group.len());
        let mut requests = Vec::with_capacity(group.len());
        for (tag, image, request) in group {
            images.push(image);
            requests.push((tag, request));
        }
        match self.pipeline.pixel_values(&images) {
            Ok(pixels) => Some((pixels, requests)),
            Err(e) => {
                let msg = e.to_string();
                for (tag, _) in requests {
                    self.rows.finished(
                        tag,
                        Err(Error::Model {
                            model: self.pipeline.name.clone(),
                            msg: msg.clone(),
                        }),
                    );
                }
                None
            }
        }
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.rows.token(tag, token)
    }

    fn finished(&mut self, tag: u64, reply: Result<ChatTurn>) {
        self.rows.finished(tag, reply)
    }
}
