//! The evidence behind an evaluation's figures, kept when
//! [`EvalOptions::evidence`](crate::EvalOptions) is set, for a report page to show
//! beside the numbers: retrieval queries with their top-5 images, captions beside
//! their images with the attributes they got wrong, wrong VQA answers and accuracy per
//! question type, the zero-shot confusion matrix.
//!
//! Only a bounded sample is kept ([`MAX_ITEMS`] items per list), each with a small
//! thumbnail of its image, so the evidence of an evaluation of any size stays small.
//! Retrieval learns which images it needs only after every embedding is computed, so
//! it reads their thumbnails in a second pass over the data instead of holding images.

use std::collections::BTreeMap;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};
use serde::Serialize;
use serde_json::Value;

use crate::metrics::{AttributeCheck, Judgement};

/// Items kept per list of evidence.
pub const MAX_ITEMS: usize = 12;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 96;

/// A small encoded copy of a sample's image.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// `image/png` or `image/jpeg`.
    pub mime: &'static str,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Thumbnail {
    /// Scales `image` down to at most [`THUMBNAIL_SIDE`] a side and encodes it as PNG
    /// or JPEG (quality 90), whichever is smaller: flat synthetic scenes compress best
    /// as PNG, noisy backgrounds and photographs as JPEG.
    pub fn of(image: &RgbImage) -> Self {
        let (w, h) = image.dimensions();
        let scaled;
        let img = if w.max(h) > THUMBNAIL_SIDE {
            let s = f64::from(THUMBNAIL_SIDE) / f64::from(w.max(h));
            let (tw, th) = (
                ((f64::from(w) * s).round() as u32).max(1),
                ((f64::from(h) * s).round() as u32).max(1),
            );
            scaled = image::imageops::thumbnail(image, tw, th);
            &scaled
        } else {
            image
        };
        let (w, h) = img.dimensions();
        let mut png = Vec::new();
        let png_ok = image::codecs::png::PngEncoder::new(&mut png)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .is_ok();
        let mut jpeg = Vec::new();
        let jpeg_ok = JpegEncoder::new_with_quality(&mut jpeg, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .is_ok();
        let (mime, bytes) = match (png_ok, jpeg_ok) {
            (true, true) if jpeg.len() < png.len() => ("image/jpeg", jpeg),
            (true, _) => ("image/png", png),
            (false, _) => ("image/jpeg", jpeg),
        };
        Thumbnail {
            mime,
            bytes,
            width: w,
            height: h,
        }
    }
}

/// What an evaluation kept to show; `images` holds the thumbnail of every sample key
/// the task's evidence names.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub images: BTreeMap<String, Thumbnail>,
    pub task: TaskEvidence,
}

/// The task's part of [`Evidence`].
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TaskEvidence {
    #[default]
    None,
    Retrieval {
        queries: Vec<RetrievalQuery>,
    },
    Caption {
        items: Vec<CaptionEvidence>,
    },
    Vqa {
        by_type: Vec<QuestionTypeRow>,
        wrong: Vec<VqaEvidence>,
    },
    ZeroShot {
        confusion: ConfusionMatrix,
        /// Misclassified images first, then correctly classified ones.
        examples: Vec<ZeroShotExample>,
    },
}

/// A text query and the images it ranked first.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalQuery {
    pub text: String,
    /// The key of the image the text describes.
    pub truth: String,
    /// The top 5 images, best first: key and score.
    pub top: Vec<(String, f32)>,
    /// The 1-based rank of the right image.
    pub rank: usize,
}

/// One attribute of a single-object synthetic record against the caption.
#[derive(Debug, Clone, Serialize)]
pub struct AttributeRow {
    pub name: &'static str,
    /// The record's value, e.g. "red" or "top left".
    pub truth: String,
    pub judgement: Judgement,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionEvidence {
    pub key: String,
    pub caption: String,
    pub references: Vec<String>,
    /// Empty for records outside the single-object synthetic world.
    pub attributes: Vec<AttributeRow>,
    /// One line per wrong statement.
    pub mistakes: Vec<String>,
    pub all_correct: Option<bool>,
}

impl CaptionEvidence {
    pub(crate) fn new(
        key: String,
        caption: String,
        references: Vec<String>,
        meta: &Value,
        check: Option<&AttributeCheck>,
    ) -> Self {
        let mut attributes = Vec::new();
        if let Some(c) = check {
            let o = &meta["objects"][0];
            let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
            let bg = &meta["background"];
            for (name, truth, judgement) in [
                ("shape", s(&o["shape"]), c.shape),
                ("color", s(&o["color"]), c.color),
                ("size", s(&o["size"]), c.size),
                ("position", s(&o["position"]), c.position),
                ("count", meta["count"].to_string(), c.count),
                (
                    "background",
                    format!("{} {}", s(&bg["style"]), s(&bg["color"])),
                    c.background,
                ),
            ] {
                attributes.push(AttributeRow {
                    name,
                    truth,
                    judgement,
                });
            }
        }
        CaptionEvidence {
            key,
            caption,
            references,
            attributes,
            mistakes: check.map(|c| c.mistakes.clone()).unwrap_or_default(),
            all_correct: check.map(|c| c.all_correct),
        }
    }
}

/// VQA accuracy of one question type.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionTypeRow {
    pub question_type: String,
    pub correct: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VqaEvidence {
    pub key: String,
    pub question: String,
    pub question_type: String,
    pub prediction: String,
    pub answers: Vec<String>,
}

/// Counts of (true label, predicted label) over the labels that occur as either.
#[derive(Debug, Clone, Serialize)]
pub struct ConfusionMatrix {
    pub labels: Vec<String>,
    /// `counts[truth][predicted]`, indices into `labels`.
    pub counts: Vec<Vec<usize>>,
}

impl ConfusionMatrix {
    /// From (truth, prediction) pairs of label indices into `label_set`; only labels
    /// that occur are kept, in label-set order.
    pub fn from_pairs(label_set: &[String], pairs: &[(usize, usize)]) -> Self {
        let mut used = vec![false; label_set.len()];
        for &(t, p) in pairs {
            used[t] = true;
            used[p] = true;
        }
        let mut index = vec![usize::MAX; label_set.len()];
        let mut labels = Vec::new();
        for (i, l) in label_set.iter().enumerate().filter(|(i, _)| used[*i]) {
            index[i] = labels.len();
            labels.push(l.clone());
        }
        let mut counts = vec![vec![0; labels.len()]; labels.len()];
        for &(t, p) in pairs {
            counts[index[t]][index[p]] += 1;
        }
        ConfusionMatrix { labels, counts }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ZeroShotExample {
    pub key: String,
    pub truth: String,
    pub predicted: String,
}

/// The type of a question, from its wording: the synthetic world's kinds (colour,
/// count, shape, position, yes/no, size, background), else "other".
pub fn question_type(question: &str) -> &'static str {
    let q = question.trim().to_lowercase();
    let starts = |p: &str| q.starts_with(p);
    if q.contains("background") {
        "background"
    } else if starts("what color") || starts("what colour") {
        "color"
    } else if starts("how many") {
        "count"
    } else if starts("what shape") {
        "shape"
    } else if starts("what size") || starts("how big") {
        "size"
    } else if starts("where") {
        "position"
    } else if ["is ", "are ", "does ", "do ", "can ", "was "]
        .iter()
        .any(|p| starts(p))
    {
        "yes/no"
    } else {
        "other"
    }
}

/// `n` indices spread evenly over `0..len`, in order.
pub(crate) fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    (0..n).map(|i| i * len / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_types_of_the_synthetic_world() {
        for (q, t) in [
            ("what color is the circle?", "color"),
            ("what color is the background?", "background"),
            ("how many squares are there?", "count"),
            ("what shape is in the top left?", "shape"),
            ("what size is the red circle?", "size"),
            ("is there a star?", "yes/no"),
            ("is the red circle left of the blue square?", "yes/no"),
            ("why?", "other"),
        ] {
            assert_eq!(question_type(q), t, "{q}");
        }
    }

    #[test]
    fn confusion_keeps_only_labels_that_occur() {
        let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let m = ConfusionMatrix::from_pairs(&labels, &[(0, 0), (0, 2), (2, 2), (2, 2)]);
        assert_eq!(m.labels, ["a", "c"]);
        assert_eq!(m.counts, vec![vec![1, 1], vec![0, 2]]);
    }

    #[test]
    fn thumbnails_are_small_and_decodable() {
        let img = RgbImage::from_fn(200, 100, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let t = Thumbnail::of(&img);
        assert_eq!((t.width, t.height), (96, 48));
        let back = image::load_from_memory(&t.bytes).unwrap();
        assert_eq!((back.width(), back.height()), (96, 48));
    }

    #[test]
    fn spread_is_even_and_bounded() {
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
    }
}
