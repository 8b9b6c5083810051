//! Stage 4: the answer, written from the results alone. HuggingGPT asks its LLM to
//! write the response and users find placeholders such as "[path]" in it; here the
//! answer is composed from what the tasks returned, so every sentence cites an
//! actual result, and a last pass replaces any reference that a model's own output
//! might carry (`<resource>-N`, `<image>-K`, `[path]`).
//!
//! Conventions that `glimpse eval --task agent` relies on: images are named
//! "image K" (the request's K-th) or "image KEY" (a retrieved one); comparisons
//! across images are stated directly ("image 2 matches "a red circle" best (0.93)");
//! a single match is answered yes or no; counts in answers are digits; the objects'
//! words are the models' own.

use std::collections::BTreeSet;

use crate::execute::{Item, Output, TaskReport, TaskState};

const NUMBER_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "on", "in", "and", "with", "is", "are", "there", "to", "at", "its",
    "it", "this", "that", "image", "picture", "photo", "shows", "showing", "some",
];

/// The answer to `request` from the task reports, in plan order.
pub fn write_answer(reports: &[TaskReport]) -> String {
    let mut lines: Vec<String> = Vec::new();
    lines.extend(compare_matches(reports));
    lines.extend(compare_labels(reports));
    for r in reports {
        match &r.state {
            TaskState::Done { items } => lines.extend(describe(r, items)),
            TaskState::Failed { error } => lines.push(format!(
                "Task {} ({}) failed: {}.",
                r.id,
                r.task,
                error.trim_end_matches('.')
            )),
            TaskState::Skipped { reason } => lines.push(format!(
                "Task {} ({}) was skipped because {reason}.",
                r.id, r.task
            )),
        }
    }
    if lines.is_empty() {
        lines.push("The plan produced no result.".into());
    }
    scrub(&lines.join("\n"))
}

fn image_of(item: &Item) -> Option<&str> {
    item.input.image.as_ref().map(|i| i.label.as_str())
}

/// Matching scores of one text over several images, best first, stated as a
/// comparison; one image against a text is a yes or a no.
fn compare_matches(reports: &[TaskReport]) -> Vec<String> {
    let mut by_text: Vec<(String, Vec<(String, f32)>)> = Vec::new();
    for r in reports {
        for item in r.items() {
            if let (Output::Score { score }, Some(text), Some(img)) =
                (&item.output, &item.input.text, image_of(item))
            {
                match by_text.iter_mut().find(|(t, _)| t == text) {
                    Some((_, list)) => list.push((img.to_string(), *score)),
                    None => by_text.push((text.clone(), vec![(img.to_string(), *score)])),
                }
            }
        }
    }
    by_text
        .into_iter()
        .map(|(text, mut list)| {
            list.sort_by(|a, b| b.1.total_cmp(&a.1));
            if list.len() == 1 {
                let (img, s) = &list[0];
                let yes = if *s >= 0.5 { "yes" } else { "no" };
                return format!("Does {img} match \"{text}\"? {yes} ({s:.2}).");
            }
            let rest: Vec<String> = list[1..]
                .iter()
                .map(|(i, s)| format!("{i} ({s:.2})"))
                .collect();
            format!(
                "{} matches \"{text}\" best ({:.2}); then {}.",
                list[0].0,
                list[0].1,
                rest.join(", ")
            )
        })
        .collect()
}

/// An image's label and its scores.
type ImageScores = (String, Vec<(String, f32)>);

/// Zero-shot labels of the same label set over several images: for each label the
/// image that fits it best.
fn compare_labels(reports: &[TaskReport]) -> Vec<String> {
    let mut groups: Vec<(BTreeSet<String>, Vec<ImageScores>)> = Vec::new();
    for r in reports {
        for item in r.items() {
            if let (Output::Labels { labels }, Some(img)) = (&item.output, image_of(item)) {
                let set: BTreeSet<String> = labels.iter().map(|l| l.label.clone()).collect();
                let scores = labels.iter().map(|l| (l.label.clone(), l.score)).collect();
                match groups.iter_mut().find(|(s, _)| *s == set) {
                    Some((_, list)) => list.push((img.to_string(), scores)),
                    None => groups.push((set, vec![(img.to_string(), scores)])),
                }
            }
        }
    }
    let mut lines = Vec::new();
    for (set, images) in groups.into_iter().filter(|(_, i)| i.len() > 1) {
        let parts: Vec<String> = set
            .iter()
            .map(|label| {
                let (img, s) = images
                    .iter()
                    .map(|(img, scores)| {
                        let s = scores
                            .iter()
                            .find(|(l, _)| l == label)
                            .map_or(0.0, |(_, s)| *s);
                        (img, s)
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("two images or more");
                format!("\"{label}\": {img} ({s:.2})")
            })
            .collect();
        lines.push(format!("Best image per label: {}.", parts.join("; ")));
    }
    lines
}

/// One line per result of a finished task.
fn describe(r: &TaskReport, items: &[Item]) -> Vec<String> {
    let by = format!("({}, {})", r.task, r.model);
    let mut lines: Vec<String> = items
        .iter()
        .map(|item| {
            let on = image_of(item).map(|i| format!("{i}: ")).unwrap_or_default();
            match &item.output {
                Output::Text { text } => match &item.input.question {
                    Some(q) => format!("{on}\"{}\" {} {by}.", q.trim(), spoken_answer(text)),
                    None if text.trim().is_empty() => format!("{on}no text was produced {by}."),
                    None => format!("{on}\"{}\" {by}.", text.trim()),
                },
                Output::Labels { labels } => {
                    let top: Vec<String> = labels
                        .iter()
                        .take(3)
                        .map(|l| format!("{} ({:.2})", l.label, l.score))
                        .collect();
                    match labels.first() {
                        Some(best) => format!(
                            "{on}most likely {} {by}; scores: {}.",
                            best.label,
                            top.join(", ")
                        ),
                        None => format!("{on}no label {by}."),
                    }
                }
                Output::Score { score } => {
                    let text = item.input.text.as_deref().unwrap_or("the text");
                    format!("{on}match score {score:.2} for \"{text}\" {by}.")
                }
                Output::Images { images } if images.is_empty() => {
                    format!("{on}no image was found {by}.")
                }
                Output::Images { images } => {
                    let query = item
                        .input
                        .text
                        .as_ref()
                        .map(|t| format!(" for \"{t}\""))
                        .unwrap_or_default();
                    let found: Vec<String> = images
                        .iter()
                        .map(|h| {
                            let text = h
                                .text
                                .as_ref()
                                .map(|t| format!(", \"{t}\""))
                                .unwrap_or_default();
                            format!("image {} ({:.2}, {}{text})", h.key, h.score, h.path)
                        })
                        .collect();
                    format!(
                        "{on}found {} image(s){query} {by}: {}.",
                        images.len(),
                        found.join("; ")
                    )
                }
                Output::Image { path } => format!("{on}produced the image {path} {by}."),
            }
        })
        .collect();
    if let Some(shared) = shared_words(items) {
        lines.push(shared);
    }
    lines
}

/// A question's answer as the writer states it: yes/no as such, a number word as a
/// digit with the model's word kept.
fn spoken_answer(text: &str) -> String {
    let t = text.trim();
    let lower = t.to_lowercase();
    match NUMBER_WORDS.iter().position(|w| *w == lower) {
        Some(n) => format!("{n} (\"{t}\")"),
        None if t.is_empty() => "got no answer".into(),
        None => t.to_string(),
    }
}

/// The words every text of a fanned-out task has in common ("what do they share?").
fn shared_words(items: &[Item]) -> Option<String> {
    let texts: Vec<&str> = items
        .iter()
        .filter(|i| i.input.question.is_none())
        .filter_map(|i| match &i.output {
            Output::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    if texts.len() < 2 {
        return None;
    }
    let words = |t: &str| -> Vec<String> {
        t.split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .filter(|w| !w.is_empty() && !STOPWORDS.contains(&w.as_str()))
            .collect()
    };
    let mut common: Vec<String> = words(texts[0]);
    common.dedup();
    for t in &texts[1..] {
        let w = words(t);
        common.retain(|c| w.contains(c));
    }
    let mut seen = BTreeSet::new();
    common.retain(|c| seen.insert(c.clone()));
    Some(if common.is_empty() {
        format!("The {} texts share no word.", texts.len())
    } else {
        format!("All {} share: {}.", texts.len(), common.join(", "))
    })
}

/// Replaces every reference form and bracketed placeholder: `<resource>-N` becomes
/// "the result of task N", `<image>-K` "image K", `[path]` and its kin vanish.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['<', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let word_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let mut replaced = false;
        for (prefix, words) in [
            ("<resource>-", "the result of task "),
            ("<image>-", "image "),
        ] {
            if let Some(after) = tail.strip_prefix(prefix) {
                let n = word_end(after);
                out.push_str(words);
                out.push_str(if n == 0 { "?" } else { &after[..n] });
                rest = &after[n..];
                replaced = true;
                break;
            }
        }
        if replaced {
            continue;
        }
        let placeholder = tail.strip_prefix('[').and_then(|t| {
            let close = t.find(']')?;
            let inner = t[..close].to_lowercase();
            let known = [
                "path", "image", "text", "result", "resource", "url", "answer", "file",
            ];
            known
                .iter()
                .any(|k| inner.trim() == *k || inner.trim().starts_with(&format!("{k} ")))
                .then_some(close + 2)
        });
        match placeholder {
            Some(len) => rest = &tail[len..],
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
