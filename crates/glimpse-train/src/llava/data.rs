//! What a LLaVA sample trains on, as token ids and a target mask.
//!
//! * Stage 1, LLaVA's "plain" template: `bos <image>×n caption eos`; the targets are
//!   the caption's tokens and eos.
//! * Stage 2, a conversation about the image in the model's chat template (the
//!   [`LlavaProcessor`] that inference uses renders and tokenises it): the image in the
//!   first user message, up to [`MAX_TURNS`] exchanges drawn from the sample's QA pairs
//!   and one caption request ([`CAPTION_INSTRUCTION`]), shuffled per sample and epoch.
//!   The targets are each assistant reply and the eos after it: for reply `i` the ids of
//!   the conversation up to its generation prompt and those up to its end are both
//!   prefixes of the whole, and the positions between them are the reply's.

use glimpse_data::dataset::Example;
use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_models::llava::{ChatMessage, LlavaProcessor, Role, CAPTION_INSTRUCTION};
use serde_json::Value;

use crate::recipe::TextChoice;
use crate::samples::{pick_qa, pick_text};

/// Exchanges per training conversation (fewer when they exceed `data.max_text_len`).
pub const MAX_TURNS: usize = 4;

/// A sample's ids (image placeholders expanded) and which of them are targets.
#[derive(Debug, Clone)]
pub struct LlavaSample {
    pub example: Example,
    pub ids: Vec<u32>,
    /// 1 where the id is a target (predicted from the positions before it).
    pub targets: Vec<u32>,
}

/// Stage 1: `bos <image>×n text eos`, text truncated to `max_text_len` tokens.
pub fn plain_ids(
    processor: &LlavaProcessor,
    bos: u32,
    eos: u32,
    text: &str,
    max_text_len: usize,
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let mut words = processor
        .tokenizer
        .encode(text, false)
        .map_err(|e| e.to_string())?;
    words.truncate(max_text_len.saturating_sub(2));
    if words.is_empty() {
        return Err("the caption has no tokens".into());
    }
    let n = processor.image_seq_length;
    let mut ids = Vec::with_capacity(2 + n + words.len());
    ids.push(bos);
    ids.extend(std::iter::repeat_n(processor.image_token_id, n));
    ids.extend(&words);
    ids.push(eos);
    let targets = (0..ids.len()).map(|i| u32::from(i > n)).collect();
    Ok((ids, targets))
}

/// Stage 2: the ids of `messages` rendered with the chat template, with 1 on the
/// assistants' tokens. Fails when the tokenisation of a prefix is not a prefix of the
/// whole (the template or tokenizer would then blur a reply's boundary).
pub fn conversation_ids(
    processor: &LlavaProcessor,
    messages: &[ChatMessage],
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let e = |e: glimpse_models::Error| e.to_string();
    let (_, ids) = processor.prompt(messages, false).map_err(e)?;
    let mut targets = vec![0u32; ids.len()];
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let (_, before) = processor.prompt(&messages[..i], true).map_err(e)?;
        let (_, through) = processor.prompt(&messages[..=i], false).map_err(e)?;
        if !ids.starts_with(&before) || !ids.starts_with(&through) || through.len() <= before.len()
        {
            return Err(format!(
                "reply {i}: the chat template's tokens of the conversation up to this reply \
                 are not a prefix of the whole conversation's"
            ));
        }
        for t in &mut targets[before.len()..through.len()] {
            *t = 1;
        }
    }
    Ok((ids, targets))
}

/// The exchanges a stage-2 sample can draw from: every QA pair and one caption
/// request. `epoch` picks the caption paraphrase and the order (validation: the
/// record's order, first caption).
pub fn exchanges(
    meta: &Value,
    key: &str,
    seed: u64,
    split_epoch: Option<u64>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = meta
        .get("qa")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let q = p.get("question")?.as_str()?.trim();
                    let a = p.get("answer")?.as_str()?.trim();
                    (!q.is_empty() && !a.is_empty()).then(|| (q.to_string(), a.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        if let Some(pair) = pick_qa(meta, key, seed, split_epoch.unwrap_or(0)) {
            out.push(pair);
        }
    }
    let (choice, epoch) = match split_epoch {
        Some(e) => (TextChoice::RandomCaption, e),
        None => (TextChoice::Caption, 0),
    };
    if let Some(c) = pick_text(meta, key, choice, seed, epoch) {
        out.push((CAPTION_INSTRUCTION.to_string(), c));
    }
    if let Some(epoch) = split_epoch {
        let h = key.bytes().fold(0x11a7_a5ee_d000_0001u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        Rng::derive(seed ^ 0x11a7a, epoch, h).shuffle(&mut out);
    }
    out
}

/// The first `turns` of `exchanges` as chat messages, the image in the first.
pub fn messages(exchanges: &[(String, String)], turns: usize) -> Vec<ChatMessage> {
    exchanges
        .iter()
        .take(turns)
        .enumerate()
        .flat_map(|(i, (q, a))| [ChatMessage::user(q, i == 0), ChatMessage::assistant(a)])
        .collect()
}

/// The stage-2 sample of `example`: as many exchanges (up to [`MAX_TURNS`]) as fit
/// `max_text_len` tokens besides the image's.
pub fn conversation_sample(
    processor: &LlavaProcessor,
    example: Example,
    seed: u64,
    split_epoch: Option<u64>,
    max_text_len: usize,
) -> Result<LlavaSample, String> {
    let ex = exchanges(&example.meta, &example.key, seed, split_epoch);
    if ex.is_empty() {
        return Err(format!(
            "sample {}: no question/answer or caption",
            example.key
        ));
    }
    let n_image = processor.image_seq_length;
    for turns in (1..=ex.len().min(MAX_TURNS)).rev() {
        let (ids, targets) = conversation_ids(processor, &messages(&ex, turns))
            .map_err(|e| format!("sample {}: {e}", example.key))?;
        if ids.len() <= n_image + max_text_len {
            return Ok(LlavaSample {
                example,
                ids,
                targets,
            });
        }
    }
    Err(format!(
        "sample {}: even one exchange exceeds data.max_text_len = {max_text_len}",
        example.key
    ))
}
