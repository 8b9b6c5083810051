//! Zero-shot classification: each image against a prompt per label, top-1 accuracy
//! with a per-class summary.

use std::collections::{BTreeSet, HashMap};

use glimpse_models::pipeline::Pipeline;
use serde_json::Value;

use super::{embed_texts, similarities};
use crate::evidence::{
    spread, ConfusionMatrix, Evidence, TaskEvidence, Thumbnail, ZeroShotExample, MAX_ITEMS,
};
use crate::metrics;
use crate::reader::{metric_error, nothing_usable, split, Reader};
use crate::records::{synth_labels, zero_shot_label, LabelSource};
use crate::{ClassRow, EvalOptions, Metrics, Result, Task, ZeroShotMetrics};

pub(crate) fn zero_shot(
    p: &Pipeline,
    reader: &mut Reader,
    opts: &EvalOptions,
) -> Result<(usize, Metrics, Option<Evidence>)> {
    let select = |meta: &Value| {
        zero_shot_label(meta).ok_or_else(|| {
            "no label (a `label` field, or a synthetic record with exactly one object)".into()
        })
    };
    let (mut image_embeds, mut keys, mut found) = (Vec::new(), Vec::new(), Vec::new());
    // Thumbnails of every image only when evidence is asked for; the mistakes are
    // known only at the end, and the few shown are picked from these.
    let mut thumbs = Vec::new();
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (k, images, _, labels) = split(batch);
        if opts.evidence {
            thumbs.extend(images.iter().map(Thumbnail::of));
        }
        image_embeds.push(p.image_embeds(&images)?);
        keys.extend(k);
        found.extend(labels);
    }
    if keys.is_empty() {
        return Err(nothing_usable(reader, "no image with a label"));
    }
    let label_set: Vec<String> = match &opts.labels {
        Some(l) => l.iter().map(|s| s.trim().to_string()).collect(),
        None if found.iter().all(|(_, s)| *s == LabelSource::Synth) => synth_labels(),
        None => found
            .iter()
            .map(|(l, _)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let index: HashMap<&str, usize> = label_set
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut kept = Vec::new(); // (row, label index)
    for (row, (key, (label, _))) in keys.iter().zip(&found).enumerate() {
        match index.get(label.as_str()) {
            Some(&c) => kept.push((row, c)),
            None => reader.skip(format!(
                "sample {key}: label {label:?} is not in the label set"
            )),
        }
    }
    if kept.is_empty() {
        return Err(nothing_usable(
            reader,
            "no image's label is in the label set",
        ));
    }
    let prompts: Vec<String> = label_set
        .iter()
        .map(|l| opts.template.replace("{}", l))
        .collect();
    let sim = similarities(&image_embeds, &embed_texts(p, &prompts, opts.batch_size)?)?;
    let nl = label_set.len();
    let logits: Vec<f32> = kept
        .iter()
        .flat_map(|&(row, _)| sim[row * nl..(row + 1) * nl].iter().copied())
        .collect();
    let truth: Vec<usize> = kept.iter().map(|&(_, c)| c).collect();
    let s =
        metrics::zero_shot_accuracy(&logits, nl, &truth).map_err(metric_error(Task::ZeroShot))?;
    let per_class = s
        .per_class
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            Some(ClassRow {
                label: label_set[c].clone(),
                support: row.support,
                accuracy: row.accuracy?,
                most_confused_with: row.most_confused_with.map(|x| label_set[x.label].clone()),
            })
        })
        .collect();
    let evidence = opts.evidence.then(|| {
        let pairs: Vec<(usize, usize)> = kept
            .iter()
            .enumerate()
            .map(|(r, &(_, c))| (c, argmax(&logits[r * nl..(r + 1) * nl])))
            .collect();
        let mut ev = Evidence::default();
        // Mistakes first, then right ones spread over the data, up to MAX_ITEMS.
        let mut order: Vec<usize> = (0..pairs.len())
            .filter(|&r| pairs[r].0 != pairs[r].1)
            .collect();
        order.truncate(MAX_ITEMS);
        let right: Vec<usize> = (0..pairs.len())
            .filter(|&r| pairs[r].0 == pairs[r].1)
            .collect();
        order.extend(
            spread(right.len(), MAX_ITEMS - order.len())
                .into_iter()
                .map(|i| right[i]),
        );
        let mut examples = Vec::new();
        for r in order {
            let (row, _) = kept[r];
            let (t, p) = pairs[r];
            ev.images.insert(keys[row].clone(), thumbs[row].clone());
            examples.push(ZeroShotExample {
                key: keys[row].clone(),
                truth: label_set[t].clone(),
                predicted: label_set[p].clone(),
            });
        }
        ev.task = TaskEvidence::ZeroShot {
            confusion: ConfusionMatrix::from_pairs(&label_set, &pairs),
            examples,
        };
        ev
    });
    Ok((
        kept.len(),
        Metrics::ZeroShot(ZeroShotMetrics {
            accuracy: s.accuracy,
            mean_per_class_accuracy: s.mean_per_class_accuracy,
            n_images: s.n_images,
            n_labels: nl,
            template: opts.template.clone(),
            per_class,
        }),
        evidence,
    ))
}

/// The first index of the largest value (the metric's tie rule).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}
