//! Tokenization through the `tokenizers` crate, with the reference's behaviour around
//! it: padding and truncation are ours (the ones stored in `tokenizer.json` are
//! switched off so they cannot silently reshape a batch), truncation keeps the closing
//! special token as the reference's does, and decoding applies the two fix-ups that
//! transformers adds on top of the Rust decoder (CLIP's `</w>` suffix, and the optional
//! clean-up of spaces before punctuation for non-BPE models).
//! [`StreamDecoder`] turns generated ids into text as they arrive.

mod config;
mod stream;

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::ModelWrapper;
use tokenizers::{AddedToken, Encoding, Tokenizer, TruncationDirection};

use crate::error::{Error, Result};
use config::TokenizerSettings;
pub use stream::StreamDecoder;

/// A padded batch of token ids.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// `[b, t]` u32, right-padded with the pad id.
    pub input_ids: Tensor,
    /// `[b, t]` u32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// Number of real tokens in each row.
    pub lengths: Vec<usize>,
}

/// A Hugging Face tokenizer plus the special-token settings stored beside it.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    origin: String,
    pad_id: u32,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    model_max_length: Option<usize>,
    /// `</w>` for CLIP-style BPE: the reference replaces it by a space after decoding.
    end_of_word_suffix: Option<String>,
    clean_up_spaces: bool,
}

/// Shortens a text for an error message.
fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("{s:?}")
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` / `special_tokens_map.json`
    /// from the same folder when they exist.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self> {
        let origin = tokenizer_json.display().to_string();
        if !tokenizer_json.is_file() {
            return Err(Error::Io {
                path: tokenizer_json.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let mut inner =
            Tokenizer::from_file(tokenizer_json).map_err(|e| Error::tokenizer(&origin, e))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::tokenizer(&origin, e))?;

        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        let mut settings = TokenizerSettings::from_dir(dir)?;
        let (end_of_word_suffix, is_bpe, is_wordpiece) = match inner.get_model() {
            // GPT-2 style files (OPT) store an empty suffix: that means "none", and
            // replacing "" would put a space between every character.
            ModelWrapper::BPE(bpe) => (
                bpe.end_of_word_suffix.clone().filter(|s| !s.is_empty()),
                true,
                false,
            ),
            ModelWrapper::WordPiece(_) => (None, false, true),
            _ => (None, false, false),
        };
        settings.apply_class_defaults(end_of_word_suffix.as_deref() == Some("</w>"), is_wordpiece);

        // Special tokens named only in the config files must be skipped by
        // `decode(.., true)` as the reference does; register those already in the vocab.
        let missing: Vec<AddedToken> = settings
            .all_special()
            .into_iter()
            .filter(|t| {
                inner.token_to_id(t).is_some() && !inner.get_added_vocabulary().is_special_token(t)
            })
            .map(|t| AddedToken::from(t, true))
            .collect();
        if !missing.is_empty() {
            inner
                .add_special_tokens(missing)
                .map_err(|e| Error::tokenizer(&origin, e))?;
        }

        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let pad_id = id_of(&settings.pad).unwrap_or(0);
        Ok(TextTokenizer {
            pad_id,
            bos_id: id_of(&settings.bos),
            eos_id: id_of(&settings.eos),
            model_max_length: settings.model_max_length,
            end_of_word_suffix,
            // transformers skips the clean-up for BPE models, where it corrupts text.
            clean_up_spaces: settings.clean_up_tokenization_spaces && !is_bpe,
            inner,
            origin,
        })
    }

    /// Token ids of one text, with the post-processor's special tokens when asked.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .encoding(text, add_special_tokens, None)?
            .get_ids()
            .to_vec())
    }

    fn encoding(
        &self,
        text: &str,
        add_special_tokens: bool,
        max_len: Option<usize>,
    ) -> Result<Encoding> {
        let fail = |e| Error::tokenizer(format!("{}, text {}", self.origin, excerpt(text)), e);
        let enc = self.inner.encode(text, add_special_tokens).map_err(fail)?;
        let Some(max_len) = max_len.filter(|&m| enc.len() > m) else {
            return Ok(enc);
        };
        // Truncate the text part only, then add the special tokens, so a closing
        // [SEP] / <|endoftext|> survives as in the reference.
        let n_special = match (add_special_tokens, self.inner.get_post_processor()) {
            (true, Some(pp)) => tokenizers::PostProcessor::added_tokens(pp, false),
            _ => 0,
        };
        if max_len < n_special {
            return Err(Error::tokenizer(
                &self.origin,
                format!("max_len {max_len} leaves no room for the {n_special} special tokens"),
            ));
        }
        let mut content = self.inner.encode(text, false).map_err(fail)?;
        content.truncate(max_len - n_special, 0, TruncationDirection::Right);
        self.inner
            .post_process(content, None, add_special_tokens)
            .map_err(fail)
    }

    /// Encodes a batch, truncates each text to `max_len` tokens (special tokens
    /// included) and right-pads to the longest row.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
        max_len: Option<usize>,
        device: &Device,
    ) -> Result<TextBatch> {
        if texts.is_empty() {
            return Err(Error::tokenizer(
                &self.origin,
                "encode_batch: no texts given",
            ));
        }
        let rows = texts
            .iter()
            .map(|t| {
                self.encoding(t, add_special_tokens, max_len)
                    .map(|e| e.get_ids().to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        for row in &rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, width - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, width - row.len()));
        }
        let shape = (rows.len(), width);
        Ok(TextBatch {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            attention_mask: Tensor::from_vec(mask, shape, device)?,
            lengths,
        })
    }

    /// Text of `ids`, as the reference's `tokenizer.decode` returns it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.origin, e))?;
        if let Some(suffix) = &self.end_of_word_suffix {
            text = text.replace(suffix.as_str(), " ").trim().to_string();
        }
        if self.clean_up_spaces {
            text = clean_up_tokenization(&text);
        }
        Ok(text)
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Id used for right padding (0 when the files name no pad token).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// `model_max_length` from `tokenizer_config.json`, when it is a real limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` object, for uses this wrapper does not cover.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The reference's `clean_up_tokenization`: drops the space a word-level decoder puts
/// before punctuation and English contractions.
fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES
        .iter()
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_reference_rules() {
        assert_eq!(
            clean_up_tokenization("it is n't here , is it ?"),
            "it isn't here, is it?"
        );
    }

    #[test]
    fn excerpt_shortens_long_texts() {
        assert!(excerpt(&"x".repeat(100)).ends_with("…\""));
    }
}
