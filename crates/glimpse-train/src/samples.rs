//! From decoded examples to tensors: which caption or question a sample trains on,
//! tokenisation, pixel batches and hard negative captions. Every random draw is a pure
//! function of (seed, epoch, sample key), so a resumed run draws what an uninterrupted
//! one would.

use candle_core::{Device, Tensor};
use glimpse_data::dataset::Example;
use glimpse_data::TextTokenizer;
use serde_json::Value;

use crate::blip::LmTexts;
use crate::objective::Split;
use crate::recipe::{Recipe, TextChoice};
use crate::trainer::RunFiles;
use crate::Result;
use glimpse_data::rng::SplitMix64 as Rng;

/// What every objective builds its batches from: the run's processor and tokenizer,
/// the device and the recipe's data settings.
pub struct Inputs {
    pub files: RunFiles,
    pub device: Device,
    pub max_text_len: usize,
    pub seed: u64,
    /// Which caption a training sample reads.
    pub text: TextChoice,
    /// The LM's prompt (`data.caption_prompt`), training batches only.
    pub caption_prompt: Option<String>,
}

impl Inputs {
    pub fn new(recipe: &Recipe, files: RunFiles, device: &Device) -> Self {
        Self {
            files,
            device: device.clone(),
            max_text_len: recipe.data.max_text_len,
            seed: recipe.model.seed,
            text: recipe.data.text,
            caption_prompt: recipe.data.caption_prompt.clone(),
        }
    }

    /// The seed and epoch a sample's draws use, and the caption choice: validation
    /// reads the first caption as drawn at epoch 0.
    fn draw(&self, split: Split) -> (TextChoice, u64) {
        match split {
            Split::Train { epoch } => (self.text, epoch),
            Split::Validation => (TextChoice::Caption, 0),
        }
    }

    /// The caption `example` trains on.
    pub fn caption(
        &self,
        example: Example,
        split: Split,
    ) -> std::result::Result<CaptionSample, String> {
        let (choice, epoch) = self.draw(split);
        match pick_text(&example.meta, &example.key, choice, self.seed, epoch) {
            Some(text) => Ok(CaptionSample { example, text }),
            None => Err(match choice {
                TextChoice::Capfilt
                | TextChoice::CapfiltFilterOnly
                | TextChoice::CapfiltCaptionerOnly => format!(
                    "sample {}: no text to train on under data.text = {choice:?} (no `capfilt` \
                     record, or the filter removed every text)",
                    example.key
                ),
                _ => format!("sample {}: no caption", example.key),
            }),
        }
    }

    /// The question and answer `example` trains on.
    pub fn question(
        &self,
        example: Example,
        split: Split,
    ) -> std::result::Result<QaSample, String> {
        let (_, epoch) = self.draw(split);
        match pick_qa(&example.meta, &example.key, self.seed, epoch) {
            Some((question, answer)) => Ok(QaSample {
                example,
                question,
                answer,
            }),
            None => Err(format!("sample {}: no question/answer", example.key)),
        }
    }

    /// # Shapes
    /// * returns `[n, 3, S, S]`
    pub fn pixels<'a>(&self, examples: impl Iterator<Item = &'a Example>) -> Result<Tensor> {
        let imgs: Vec<image::RgbImage> = examples.map(|e| e.image.clone()).collect();
        let processor = self.files.processor.as_ref().ok_or_else(|| {
            crate::Error::io_ctx(&self.files.dir, "has no preprocessor_config.json")
        })?;
        Ok(processor.preprocess_batch(&imgs, &self.device)?)
    }

    /// [`encode_texts`] with the run's tokenizer and length.
    pub fn encode(&self, texts: &[String]) -> Result<(Tensor, Tensor)> {
        encode_texts(
            &self.files.tokenizer,
            texts,
            self.max_text_len,
            &self.device,
        )
    }

    /// A caption batch; training batches of a recipe with `hard_negatives` carry two
    /// rewritten captions per image (see [`negative_texts`]).
    pub fn caption_batch(
        &self,
        samples: &[CaptionSample],
        split: Split,
        hard_negatives: bool,
    ) -> Result<CaptionBatch> {
        let pixel_values = self.pixels(samples.iter().map(|s| &s.example))?;
        let texts: Vec<String> = samples.iter().map(|s| s.text.clone()).collect();
        let (input_ids, attention_mask) = self.encode(&texts)?;
        let negatives = match split {
            Split::Train { epoch } if hard_negatives => {
                let (mut texts, mut valid) = negative_texts(samples, self.seed, epoch, 0);
                let (t1, v1) = negative_texts(samples, self.seed, epoch, 1);
                texts.extend(t1);
                valid.extend(v1);
                let (ids, mask) = self.encode(&texts)?;
                let n = valid.len();
                Some(NegativeCaptions {
                    ids,
                    mask,
                    valid: Tensor::from_vec(valid, n, &self.device)?,
                })
            }
            _ => None,
        };
        let lm = match (&self.caption_prompt, split) {
            (Some(prompt), Split::Train { .. }) => Some(self.prompted(prompt, &texts)?),
            _ => None,
        };
        Ok(CaptionBatch {
            pixel_values,
            input_ids,
            attention_mask,
            negatives,
            lm,
        })
    }

    /// `texts` after `prompt` for the LM, with the start token and the prompt's tokens
    /// left out of the targets (BLIP's `decoder_targets[:, :prompt_length] = -100`).
    fn prompted(&self, prompt: &str, texts: &[String]) -> Result<LmTexts> {
        let prompt = prompt.trim_end();
        let (_, p_mask) = self.encode(&[prompt.to_string()])?;
        // [CLS] and the prompt's words: every token but the closing [SEP].
        let p_len = p_mask.to_vec2::<u32>()?[0]
            .iter()
            .filter(|&&m| m == 1)
            .count()
            .saturating_sub(1);
        let joined: Vec<String> = texts.iter().map(|t| format!("{prompt} {t}")).collect();
        let (ids, mask) = self.encode(&joined)?;
        let (b, t) = mask.dims2()?;
        let keep: Vec<u32> = (0..b * t).map(|i| u32::from(i % t >= p_len)).collect();
        let keep = Tensor::from_vec(keep, (b, t), &self.device)?;
        let targets = mask.mul(&keep)?;
        Ok(LmTexts { ids, mask, targets })
    }
}

/// An example and the caption it trains on.
pub struct CaptionSample {
    pub example: Example,
    pub text: String,
}

/// An example and the question/answer pair it trains on.
pub struct QaSample {
    pub example: Example,
    pub question: String,
    pub answer: String,
}

/// Images with one caption each.
pub struct CaptionBatch {
    /// `[B, 3, S, S]`
    pub pixel_values: Tensor,
    /// `[B, T]` u32
    pub input_ids: Tensor,
    /// `[B, T]` u32
    pub attention_mask: Tensor,
    pub negatives: Option<NegativeCaptions>,
    /// The captions after `data.caption_prompt` for the LM (training batches).
    pub lm: Option<LmTexts>,
}

/// Rewritten captions that must not match their image, round-major (row `r B + i`
/// belongs to image `i`).
pub struct NegativeCaptions {
    /// `[k B, Tn]` u32
    pub ids: Tensor,
    /// `[k B, Tn]` u32
    pub mask: Tensor,
    /// `[k B]` f32: 1 where the row holds a real rewrite.
    pub valid: Tensor,
}

/// A question/answer pair of `meta` (`qa: [{question, answer}]`, or top-level
/// `question` + `answer`), drawn per sample and epoch.
pub fn pick_qa(meta: &Value, key: &str, seed: u64, epoch: u64) -> Option<(String, String)> {
    let pair = |v: &Value| -> Option<(String, String)> {
        let q = v.get("question")?.as_str()?.trim();
        let a = v.get("answer")?.as_str()?.trim();
        (!q.is_empty() && !a.is_empty()).then(|| (q.to_string(), a.to_string()))
    };
    let list: Vec<(String, String)> = meta
        .get("qa")
        .and_then(|q| q.as_array())
        .map(|a| a.iter().filter_map(pair).collect())
        .unwrap_or_default();
    if list.is_empty() {
        return pair(meta);
    }
    let mut rng = Rng::derive(seed ^ 0x9a, epoch, key_hash(key, 0x8422_2325));
    Some(list[rng.below_from_unit(list.len())].clone())
}

/// Like [`pick_qa`], but with probability `share` a pair whose question contains
/// `prefer`, when the sample has one (drawn from the same seed, epoch and key).
pub fn pick_qa_preferring(
    meta: &Value,
    key: &str,
    seed: u64,
    epoch: u64,
    prefer: &str,
    share: f64,
) -> Option<(String, String)> {
    let mut rng = Rng::derive(seed ^ 0x9b, epoch, key_hash(key, 0x8422_2325));
    if rng.unit() < share {
        let preferred: Vec<(String, String)> = meta
            .get("qa")
            .and_then(|q| q.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        let q = v.get("question")?.as_str()?.trim();
                        let a = v.get("answer")?.as_str()?.trim();
                        (q.contains(prefer) && !a.is_empty())
                            .then(|| (q.to_string(), a.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !preferred.is_empty() {
            return Some(preferred[rng.below_from_unit(preferred.len())].clone());
        }
    }
    pick_qa(meta, key, seed, epoch)
}

/// FNV-1a style hash of a sample key from `basis`: with the seed and the epoch it
/// picks a sample's random draws (caption, question, negatives) independently of the
/// order samples arrive in. Each purpose keeps its own basis, so draws stay fixed.
pub(crate) fn key_hash(key: &str, basis: u64) -> u64 {
    key.bytes()
        .fold(basis, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The text that trains on `meta`, or `None` when the sample has none.
pub fn pick_text(
    meta: &Value,
    key: &str,
    choice: TextChoice,
    seed: u64,
    epoch: u64,
) -> Option<String> {
    let list: Vec<&str> = meta
        .get("captions")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    let single = meta
        .get("caption")
        .and_then(|c| c.as_str())
        .filter(|s| !s.trim().is_empty());
    let draw = |list: &[&str]| -> Option<String> {
        if list.is_empty() {
            return None;
        }
        let mut rng = Rng::derive(seed, epoch, key_hash(key, 0xcbf2_9ce4_8422_2325));
        Some(list[rng.below_from_unit(list.len())].to_string())
    };
    match choice {
        TextChoice::Caption => single.or(list.first().copied()).map(String::from),
        TextChoice::RandomCaption => draw(&list).or(single.map(String::from)),
        TextChoice::Capfilt | TextChoice::CapfiltFilterOnly | TextChoice::CapfiltCaptionerOnly => {
            draw(&capfilt_texts(meta, choice))
        }
    }
}

/// The texts a `capfilt` choice draws from, in the record `glimpse capfilt` writes
/// (`{"web": {"text", "itm", "kept"} | null, "synthetic": [...], "texts": [...]}`);
/// none when the sample has no such record or nothing qualifies.
fn capfilt_texts(meta: &Value, choice: TextChoice) -> Vec<&str> {
    fn text(v: &Value) -> Option<&str> {
        v.get("text")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }
    let Some(rec) = meta.get("capfilt") else {
        return Vec::new();
    };
    let kept = |v: &Value| v.get("kept").and_then(Value::as_bool) == Some(true);
    let web = rec.get("web").filter(|w| !w.is_null());
    let synthetic = rec
        .get("synthetic")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match choice {
        TextChoice::CapfiltFilterOnly => {
            web.filter(|w| kept(w)).and_then(text).into_iter().collect()
        }
        TextChoice::CapfiltCaptionerOnly => web
            .and_then(text)
            .into_iter()
            .chain(synthetic.iter().filter_map(text))
            .collect(),
        _ => rec
            .get("texts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.trim().is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Tokenizes `texts` with `[CLS] ... [SEP]`, truncated to `max_len` (the last token
/// stays `[SEP]`), right-padded with `pad`.
///
/// # Shapes
/// * returns ids `[n, T]` u32 and mask `[n, T]` u32
pub fn encode_texts(
    tok: &TextTokenizer,
    texts: &[String],
    max_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut rows = Vec::with_capacity(texts.len());
    for t in texts {
        let mut ids = tok.encode(t, true)?;
        if ids.len() > max_len {
            let last = *ids.last().unwrap();
            ids.truncate(max_len - 1);
            ids.push(last);
        }
        rows.push(ids);
    }
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let pad = tok.pad_id();
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for r in &rows {
        for i in 0..t {
            ids.push(r.get(i).copied().unwrap_or(pad));
            mask.push(u32::from(i < r.len()));
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), t), device)?,
        Tensor::from_vec(mask, (rows.len(), t), device)?,
    ))
}

/// Hard negative captions for a batch, drawn per sample and epoch: `round` 0 swaps
/// the shape word where there is one, other rounds any attribute word.
fn negative_texts(
    samples: &[CaptionSample],
    seed: u64,
    epoch: u64,
    round: u64,
) -> (Vec<String>, Vec<f32>) {
    samples
        .iter()
        .map(|s| {
            let h = key_hash(&s.example.key, 0x1f3d);
            let mut rng = Rng::derive(seed ^ 0x4e47 ^ (round << 32), epoch, h);
            let prefer = (round == 0).then_some(crate::negatives::SHAPE);
            match crate::negatives::swap_attribute_of_kind(&s.text.to_lowercase(), prefer, &mut rng)
            {
                Some(n) => (n, 1.0),
                None => (s.text.clone(), 0.0),
            }
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preferred_question_is_drawn_at_its_share() {
        let meta = serde_json::json!({"qa": [
            {"question": "what color is the circle?", "answer": "red"},
            {"question": "is there a star?", "answer": "no"},
            {"question": "how many circles are there?", "answer": "2"},
            {"question": "what shape is in the center?", "answer": "circle"},
        ]});
        let count = |share: f64| {
            (0..400)
                .filter(|i| {
                    let key = format!("{i:06}");
                    let (q, _) = pick_qa_preferring(&meta, &key, 0, 0, "how many", share).unwrap();
                    q.starts_with("how many")
                })
                .count()
        };
        // Uniform draws give a quarter; at share 0.5 about 0.5 + 0.5/4.
        assert!((60..=140).contains(&count(0.0)), "{}", count(0.0));
        assert!((210..=290).contains(&count(0.5)), "{}", count(0.5));
        assert_eq!(count(1.0), 400);
        // A sample without such a question falls back to any of its own.
        let plain = serde_json::json!({"qa": [{"question": "is there a star?", "answer": "no"}]});
        let (q, a) = pick_qa_preferring(&plain, "k", 0, 0, "how many", 1.0).unwrap();
        assert_eq!((q.as_str(), a.as_str()), ("is there a star?", "no"));
    }

    #[test]
    fn capfilt_choices_read_the_filters_verdicts() {
        // The record `glimpse capfilt` writes: the web caption removed, one of two
        // synthetic captions kept.
        let meta = serde_json::json!({
            "caption": "a red star",
            "captions": ["a green circle"],
            "capfilt": {
                "web": {"text": "a red star", "itm": 0.1, "kept": false},
                "synthetic": [
                    {"text": "a green circle", "itm": 0.9, "kept": true},
                    {"text": "a blue square", "itm": 0.2, "kept": false},
                ],
                "texts": ["a green circle"],
            }
        });
        let draws = |choice: TextChoice| -> std::collections::BTreeSet<String> {
            (0..64)
                .filter_map(|e| pick_text(&meta, "000001", choice, 0, e))
                .collect()
        };
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert_eq!(draws(TextChoice::Capfilt), set(&["a green circle"]));
        assert_eq!(draws(TextChoice::CapfiltFilterOnly), set(&[]));
        assert_eq!(
            draws(TextChoice::CapfiltCaptionerOnly),
            set(&["a red star", "a green circle", "a blue square"])
        );
        // The web caption kept: filter-only trains on it.
        let mut kept = meta.clone();
        kept["capfilt"]["web"]["kept"] = true.into();
        assert_eq!(
            draws_of(&kept, TextChoice::CapfiltFilterOnly),
            vec!["a red star"]
        );
        // Data that never went through CapFilt has nothing to draw.
        let plain = serde_json::json!({"caption": "a red star"});
        assert_eq!(pick_text(&plain, "k", TextChoice::Capfilt, 0, 0), None);
        assert_eq!(
            pick_text(&plain, "k", TextChoice::RandomCaption, 0, 0).as_deref(),
            Some("a red star")
        );
    }

    fn draws_of(meta: &Value, choice: TextChoice) -> Vec<String> {
        let mut v: Vec<String> = (0..16)
            .filter_map(|e| pick_text(meta, "k", choice, 0, e))
            .collect();
        v.dedup();
        v
    }
}
