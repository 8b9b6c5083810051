//! What a record provides to each task: the texts that describe its image, its
//! zero-shot label, its reference captions, its questions. Small public functions, so
//! the rules are testable without a model.

use glimpse_synth::vocab::{COLORS, SHAPES};
use serde_json::Value;

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().or_else(|| x.get("answer")?.as_str()))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn non_blank(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The texts that describe a record's image for retrieval: a synthetic record's
/// `clean_caption` (its `caption` may be deliberately corrupted), else every one of
/// `captions` (COCO: all five, the standard protocol), else `caption`.
pub fn retrieval_texts(meta: &Value) -> Vec<String> {
    if let Some(c) = non_blank(meta.get("clean_caption")) {
        return vec![c];
    }
    let all = str_list(meta.get("captions"));
    if !all.is_empty() {
        return all;
    }
    non_blank(meta.get("caption")).into_iter().collect()
}

/// The reference captions of a record: every one of `captions` (the synthetic
/// world's five paraphrases, COCO's annotations), else `caption`.
pub fn reference_captions(meta: &Value) -> Vec<String> {
    let all = str_list(meta.get("captions"));
    if !all.is_empty() {
        return all;
    }
    non_blank(meta.get("caption")).into_iter().collect()
}

/// Where a zero-shot label came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// The record's `label` field.
    Field,
    /// "{color} {shape}" of a single-object synthetic record.
    Synth,
}

/// A record's zero-shot label: its `label` field, else "{color} {shape}" when it is
/// a synthetic record with exactly one object; `None` otherwise.
pub fn zero_shot_label(meta: &Value) -> Option<(String, LabelSource)> {
    if let Some(l) = non_blank(meta.get("label")) {
        return Some((l, LabelSource::Field));
    }
    let objects = meta.get("objects")?.as_array()?;
    let [o] = objects.as_slice() else {
        return None;
    };
    let color = non_blank(o.get("color"))?;
    let shape = non_blank(o.get("shape"))?;
    Some((format!("{color} {shape}"), LabelSource::Synth))
}

/// Every "{color} {shape}" of the synthetic world, colour-major.
pub fn synth_labels() -> Vec<String> {
    COLORS
        .iter()
        .flat_map(|(c, _)| SHAPES.iter().map(move |(s, _)| format!("{c} {s}")))
        .collect()
}

/// A question and its accepted answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaPair {
    pub question: String,
    pub answers: Vec<String>,
}

fn answers_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = non_blank(v.get("answer")).into_iter().collect();
    out.extend(str_list(v.get("answers")));
    out
}

/// A record's questions: each `qa` entry (`question` with `answer` and/or `answers`),
/// else a top-level `question` with `answer`/`answers` (strings, or VQA-style objects
/// with an `answer`). Questions without an answer are left out.
pub fn qa_pairs(meta: &Value) -> Vec<QaPair> {
    let items: Vec<&Value> = match meta.get("qa").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![meta],
    };
    items
        .into_iter()
        .filter_map(|v| {
            let question = non_blank(v.get("question"))?;
            let answers = answers_of(v);
            (!answers.is_empty()).then_some(QaPair { question, answers })
        })
        .collect()
}

/// A generated caption without the prompt it was asked to start with.
pub(crate) fn strip_prompt(text: &str, prompt: Option<&str>) -> String {
    let text = text.trim();
    if let Some(p) = prompt.map(str::trim).filter(|p| !p.is_empty()) {
        if text.len() >= p.len() && text[..p.len()].eq_ignore_ascii_case(p) {
            return text[p.len()..].trim().to_string();
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_stripped_before_scoring() {
        assert_eq!(
            strip_prompt("A picture of a red circle", Some("a picture of")),
            "a red circle"
        );
        assert_eq!(
            strip_prompt(" a red circle ", Some("a photo of")),
            "a red circle"
        );
        assert_eq!(strip_prompt("a red circle", None), "a red circle");
    }
}
