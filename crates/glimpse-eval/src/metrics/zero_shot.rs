//! Zero-shot classification: top-1 accuracy from per-image logits over a label set
//! (CLIP's "a photo of a {label}" prompts scored against the image), with a per-class
//! summary that says which label each class is most often mistaken for.

use serde::Serialize;

use super::{check_len, invalid, MetricsError, Result};

/// A label predicted instead of the true one, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub label: usize,
    pub count: usize,
}

/// One class of [`ZeroShotScores`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSummary {
    /// Images whose true label is this class.
    pub support: usize,
    /// Of those, how many were predicted correctly.
    pub correct: usize,
    /// `correct / support`; `None` when the class has no images.
    pub accuracy: Option<f64>,
    /// Images of any class predicted as this class.
    pub predicted: usize,
    /// The wrong label most often predicted for this class (lowest label on ties);
    /// `None` when every image of the class was right.
    pub most_confused_with: Option<Confusion>,
}

/// Top-1 accuracy over all images, the mean of the per-class accuracies over classes
/// that have images (balanced accuracy), and the per-class summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroShotScores {
    pub accuracy: f64,
    pub mean_per_class_accuracy: f64,
    pub n_images: usize,
    pub per_class: Vec<ClassSummary>,
}

/// The index of the largest value, the lowest among equal maxima (rows are non-empty
/// and NaN-free here).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Top-1 zero-shot accuracy.
///
/// - `logits`: `labels.len() * n_labels` scores, row-major (row `i` is image `i`
///   against every label); any finite or infinite value, NaN is an error.
/// - `labels[i]`: the true label of image `i`, `< n_labels`.
///
/// Ties between labels go to the lower label index ([`argmax`]). Errors: no images or
/// no labels, `logits` of the wrong length, a label out of range, a NaN.
pub fn zero_shot_accuracy(
    logits: &[f32],
    n_labels: usize,
    labels: &[usize],
) -> Result<ZeroShotScores> {
    if labels.is_empty() {
        return Err(MetricsError::Empty { what: "labels" });
    }
    if n_labels == 0 {
        return Err(MetricsError::Empty { what: "n_labels" });
    }
    let cells = labels
        .len()
        .checked_mul(n_labels)
        .ok_or_else(|| invalid("n_labels", "images x labels overflows"))?;
    check_len("logits (images x labels)", cells, logits.len())?;
    if let Some(at) = logits.iter().position(|v| v.is_nan()) {
        return Err(invalid(
            "logits",
            format!("NaN at image {}, label {}", at / n_labels, at % n_labels),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= n_labels) {
        return Err(invalid(
            "labels",
            format!("image {i} has label {l}, but there are {n_labels} labels"),
        ));
    }

    // confusion[true][predicted]; n_labels^2 counts, fine for label sets up to a few
    // thousand.
    let mut confusion = vec![vec![0usize; n_labels]; n_labels];
    for (row, &label) in logits.chunks_exact(n_labels).zip(labels) {
        confusion[label][argmax(row)] += 1;
    }
    let per_class: Vec<ClassSummary> = (0..n_labels)
        .map(|c| {
            let support: usize = confusion[c].iter().sum();
            let correct = confusion[c][c];
            let most_confused_with = (0..n_labels)
                .filter(|&p| p != c && confusion[c][p] > 0)
                .map(|p| Confusion {
                    label: p,
                    count: confusion[c][p],
                })
                .reduce(|a, b| if b.count > a.count { b } else { a });
            ClassSummary {
                support,
                correct,
                accuracy: (support > 0).then(|| correct as f64 / support as f64),
                predicted: confusion.iter().map(|r| r[c]).sum(),
                most_confused_with,
            }
        })
        .collect();
    let correct: usize = per_class.iter().map(|c| c.correct).sum();
    let seen: Vec<f64> = per_class.iter().filter_map(|c| c.accuracy).collect();
    Ok(ZeroShotScores {
        accuracy: correct as f64 / labels.len() as f64,
        // At least one class has images, since `labels` is non-empty.
        mean_per_class_accuracy: seen.iter().sum::<f64>() / seen.len() as f64,
        n_images: labels.len(),
        per_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_confusion() {
        // 5 images, 3 labels.
        #[rustfmt::skip]
        let logits = [
            2.0, 1.0, 0.0, // -> 0, true 0
            0.0, 3.0, 1.0, // -> 1, true 0
            0.0, 3.0, 1.0, // -> 1, true 0
            0.0, 0.0, 5.0, // -> 2, true 2
            1.0, 1.0, 0.0, // tie -> 0, true 1
        ];
        let s = zero_shot_accuracy(&logits, 3, &[0, 0, 0, 2, 1]).unwrap();
        assert_eq!(s.accuracy, 2.0 / 5.0);
        assert_eq!(s.n_images, 5);
        let c0 = &s.per_class[0];
        assert_eq!((c0.support, c0.correct, c0.predicted), (3, 1, 2));
        assert_eq!(c0.accuracy, Some(1.0 / 3.0));
        assert_eq!(
            c0.most_confused_with,
            Some(Confusion { label: 1, count: 2 })
        );
        assert_eq!(s.per_class[1].accuracy, Some(0.0));
        assert_eq!(s.per_class[2].most_confused_with, None);
        assert_eq!(s.mean_per_class_accuracy, (1.0 / 3.0 + 0.0 + 1.0) / 3.0);
    }

    #[test]
    fn classes_without_images_are_left_out_of_the_mean() {
        let s = zero_shot_accuracy(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 3, &[0, 1]).unwrap();
        assert_eq!(s.per_class[2].accuracy, None);
        assert_eq!(s.mean_per_class_accuracy, 1.0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            zero_shot_accuracy(&[], 3, &[]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            zero_shot_accuracy(&[0.0; 5], 3, &[0, 1]),
            Err(MetricsError::Length { .. })
        ));
        let e = zero_shot_accuracy(&[0.0; 4], 2, &[0, 2]).unwrap_err();
        assert!(e.to_string().contains("image 1 has label 2"), "{e}");
        let e = zero_shot_accuracy(&[0.0, f32::NAN], 2, &[0]).unwrap_err();
        assert!(e.to_string().contains("NaN at image 0, label 1"), "{e}");
    }
}
