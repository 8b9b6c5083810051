//! `LlavaProcessor`: the chat template, the tokenizer with `<image>` expansion, and the
//! image processor (`image_processor.preprocess_batch` gives the pixel values), read
//! from a checkpoint directory.

use glimpse_data::{ImageProcessor, TextTokenizer};

use super::config::LlavaConfig;
use super::template::{ChatMessage, ChatTemplate};
use crate::checkpoint::ModelFiles;
use crate::{Error, Result};

/// Turns a conversation and an image into the model's inputs, as the reference's
/// `LlavaProcessor.apply_chat_template(..., tokenize=True)` does.
#[derive(Debug, Clone)]
pub struct LlavaProcessor {
    pub tokenizer: TextTokenizer,
    pub image_processor: ImageProcessor,
    pub template: ChatTemplate,
    /// Id of `<image>` (the config's `image_token_index`).
    pub image_token_id: u32,
    /// How many ids one `<image>` becomes: the number of features the vision tower
    /// yields per image (`(size/patch)^2`, +1 with `"full"`), which is what the
    /// reference's processor computes and what the model requires.
    pub image_seq_length: usize,
}

impl LlavaProcessor {
    /// Reads `tokenizer.json` (+ `tokenizer_config.json`), the chat template (the
    /// built-in LLaVA-1.5 format when the checkpoint has none) and
    /// `preprocessor_config.json` or `processor_config.json`.
    pub fn load(files: &ModelFiles, config: &LlavaConfig) -> Result<Self> {
        let model_err = |msg: String| Error::Model {
            model: files.dir.display().to_string(),
            msg,
        };
        let tok_path = files
            .tokenizer
            .clone()
            .ok_or_else(|| model_err("no tokenizer.json: chat needs the tokenizer".into()))?;
        let tokenizer = TextTokenizer::from_file(&tok_path)?;
        let template =
            ChatTemplate::from_dir(&files.dir)?.unwrap_or_else(ChatTemplate::llava_default);
        let proc_path = files
            .preprocessor
            .clone()
            .or_else(|| Some(files.dir.join("processor_config.json")).filter(|p| p.is_file()))
            .ok_or_else(|| {
                model_err("no preprocessor_config.json or processor_config.json".into())
            })?;
        let image_processor = ImageProcessor::from_file(&proc_path)?;
        let image_token = image_token_text(&proc_path).unwrap_or_else(|| "<image>".into());
        match tokenizer.token_id(&image_token) {
            Some(id) if id == config.image_token_index => {}
            other => {
                return Err(model_err(format!(
                    "the tokenizer maps {image_token:?} to {other:?} but config.json's \
                     image_token_index is {}",
                    config.image_token_index
                )))
            }
        }
        Ok(Self {
            tokenizer,
            image_processor,
            template,
            image_token_id: config.image_token_index,
            image_seq_length: config.image_tokens_per_image(),
        })
    }

    /// The prompt text for `messages`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template.render(messages, add_generation_prompt)
    }

    /// Token ids of a prompt with every `<image>` expanded to `image_seq_length` ids.
    /// The tokenizer adds its special tokens (`<s>`) unless the text already starts
    /// with the bos token, as the reference's processor decides.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let has_bos = self
            .template
            .special_tokens
            .get("bos_token")
            .is_some_and(|bos| !bos.is_empty() && prompt.starts_with(bos.as_str()));
        let ids = self.tokenizer.encode(prompt, !has_bos)?;
        Ok(self.expand(&ids))
    }

    /// Replaces each image id by `image_seq_length` copies.
    pub fn expand(&self, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len() + self.image_seq_length);
        for &id in ids {
            match id == self.image_token_id {
                true => out.extend(std::iter::repeat_n(id, self.image_seq_length)),
                false => out.push(id),
            }
        }
        out
    }

    /// Renders and encodes `messages`: the prompt text and its expanded ids.
    pub fn prompt(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>)> {
        let text = self.render(messages, add_generation_prompt)?;
        let ids = self.encode(&text)?;
        Ok((text, ids))
    }

    /// Text of generated ids, as the reference decodes a reply: the trailing eos
    /// dropped, special tokens skipped.
    pub fn decode_reply(&self, ids: &[u32], eos: &[u32]) -> Result<String> {
        let end = match ids.last() {
            Some(last) if eos.contains(last) => ids.len() - 1,
            _ => ids.len(),
        };
        Ok(self.tokenizer.decode(&ids[..end], true)?)
    }
}

/// `image_token` of a `processor_config.json`, when it names one.
fn image_token_text(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("image_token")?.as_str().map(str::to_string)
}
