//! Image-text retrieval: recall at K in both directions and mean/median rank, as in
//! the CLIP and BLIP papers' COCO/Flickr30k retrieval tables.
//!
//! The input is a similarity matrix of images x texts (row-major) and, for each text,
//! the index of the image it describes; an image usually has several texts.
//!
//! - image -> text: for image `i`, the texts are ranked by `sim[i][*]`; the image's
//!   rank is that of its best-ranked own text (a hit at K when ANY of its texts is in
//!   the top K).
//! - text -> image: for text `t`, the images are ranked by `sim[*][t]`; the text's
//!   rank is that of its image.
//!
//! Ties: of two candidates with equal similarity the one with the lower index ranks
//! first. This is deterministic and independent of sort stability, but it favours
//! low indices: a model that outputs a constant similarity scores R@1 = 1 for query 0.
//! Ties are rare with real float scores; callers who care can check for them.

use serde::Serialize;

use super::{check_len, invalid, MetricsError, Result};

/// The cut-offs K of [`RetrievalScores`].
pub const RECALL_KS: [usize; 3] = [1, 5, 10];

/// 1-based ranks of the correct item for each query (1 = ranked first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetrievalRanks {
    /// Per image: the rank of its best-ranked own text among all texts.
    pub i2t: Vec<usize>,
    /// Per text: the rank of its image among all images.
    pub t2i: Vec<usize>,
}

/// Recall at [`RECALL_KS`] in both directions, as fractions in [0, 1], and the mean
/// and median 1-based rank of the correct item (the median of an even number of
/// ranks is the mean of the two middle ones).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalScores {
    pub ks: [usize; 3],
    pub i2t: [f64; 3],
    pub t2i: [f64; 3],
    pub i2t_mean_rank: f64,
    pub i2t_median_rank: f64,
    pub t2i_mean_rank: f64,
    pub t2i_median_rank: f64,
    pub n_images: usize,
    pub n_texts: usize,
}

/// Whether candidate `a` (value `va`) ranks before candidate `b` (value `vb`).
fn before(va: f32, a: usize, vb: f32, b: usize) -> bool {
    va > vb || (va == vb && a < b)
}

/// The rank of every query's correct item; see the module doc for the rules.
///
/// - `sim`: `n_images * text_to_image.len()` similarities, row `i` holding image `i`
///   against every text. Any finite or infinite value; NaN is an error.
/// - `text_to_image[t]`: the image text `t` describes, `< n_images`.
///
/// Errors: no images or no texts, `sim` of the wrong length, an image index out of
/// range, an image that no text describes (it could never be retrieved), a NaN.
pub fn retrieval_ranks(
    sim: &[f32],
    n_images: usize,
    text_to_image: &[usize],
) -> Result<RetrievalRanks> {
    let n_texts = text_to_image.len();
    if n_images == 0 {
        return Err(MetricsError::Empty { what: "n_images" });
    }
    if n_texts == 0 {
        return Err(MetricsError::Empty {
            what: "text_to_image",
        });
    }
    let cells = n_images
        .checked_mul(n_texts)
        .ok_or_else(|| invalid("n_images", "n_images x n_texts overflows"))?;
    check_len("sim (n_images x n_texts)", cells, sim.len())?;
    if let Some(at) = sim.iter().position(|v| v.is_nan()) {
        return Err(invalid(
            "sim",
            format!("NaN at image {}, text {}", at / n_texts, at % n_texts),
        ));
    }
    let mut texts_of = vec![Vec::new(); n_images];
    for (t, &i) in text_to_image.iter().enumerate() {
        if i >= n_images {
            return Err(invalid(
                "text_to_image",
                format!("text {t} names image {i}, but there are {n_images} images"),
            ));
        }
        texts_of[i].push(t);
    }
    if let Some(i) = texts_of.iter().position(Vec::is_empty) {
        return Err(invalid(
            "text_to_image",
            format!("image {i} has no text, so it can never be retrieved"),
        ));
    }

    let i2t = texts_of
        .iter()
        .enumerate()
        .map(|(i, own)| {
            let row = &sim[i * n_texts..(i + 1) * n_texts];
            // The own text that ranks first; its rank is the image's rank.
            let best = own
                .iter()
                .copied()
                .reduce(|a, b| if before(row[b], b, row[a], a) { b } else { a })
                .unwrap_or(0);
            1 + (0..n_texts)
                .filter(|&j| before(row[j], j, row[best], best))
                .count()
        })
        .collect();
    let t2i = text_to_image
        .iter()
        .enumerate()
        .map(|(t, &i)| {
            let col = |k: usize| sim[k * n_texts + t];
            1 + (0..n_images)
                .filter(|&k| before(col(k), k, col(i), i))
                .count()
        })
        .collect();
    Ok(RetrievalRanks { i2t, t2i })
}

fn recalls(ranks: &[usize]) -> [f64; 3] {
    RECALL_KS.map(|k| ranks.iter().filter(|&&r| r <= k).count() as f64 / ranks.len() as f64)
}

fn mean(ranks: &[usize]) -> f64 {
    ranks.iter().sum::<usize>() as f64 / ranks.len() as f64
}

fn median(ranks: &[usize]) -> f64 {
    let mut v = ranks.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] + v[m]) as f64 / 2.0
    }
}

impl RetrievalScores {
    /// Scores from ranks (both lists non-empty, as [`retrieval_ranks`] returns them).
    pub fn from_ranks(ranks: &RetrievalRanks) -> Result<Self> {
        if ranks.i2t.is_empty() || ranks.t2i.is_empty() {
            return Err(MetricsError::Empty { what: "ranks" });
        }
        Ok(RetrievalScores {
            ks: RECALL_KS,
            i2t: recalls(&ranks.i2t),
            t2i: recalls(&ranks.t2i),
            i2t_mean_rank: mean(&ranks.i2t),
            i2t_median_rank: median(&ranks.i2t),
            t2i_mean_rank: mean(&ranks.t2i),
            t2i_median_rank: median(&ranks.t2i),
            n_images: ranks.i2t.len(),
            n_texts: ranks.t2i.len(),
        })
    }
}

/// Image->text and text->image recall at 1, 5 and 10 with mean and median ranks.
/// Arguments and errors as [`retrieval_ranks`]. A K above the number of candidates
/// counts every query as a hit.
pub fn recall_at_k(
    sim: &[f32],
    n_images: usize,
    text_to_image: &[usize],
) -> Result<RetrievalScores> {
    RetrievalScores::from_ranks(&retrieval_ranks(sim, n_images, text_to_image)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranks by sorting, the obvious way, to cross-check the counting version.
    fn ranks_by_sorting(sim: &[f32], n_images: usize, t2img: &[usize]) -> RetrievalRanks {
        let n_texts = t2img.len();
        let i2t = (0..n_images)
            .map(|i| {
                let mut order: Vec<usize> = (0..n_texts).collect();
                // Stable sort by descending score keeps lower indices first on ties.
                order.sort_by(|&a, &b| sim[i * n_texts + b].total_cmp(&sim[i * n_texts + a]));
                1 + order.iter().position(|&t| t2img[t] == i).unwrap()
            })
            .collect();
        let t2i = (0..n_texts)
            .map(|t| {
                let mut order: Vec<usize> = (0..n_images).collect();
                order.sort_by(|&a, &b| sim[b * n_texts + t].total_cmp(&sim[a * n_texts + t]));
                1 + order.iter().position(|&i| i == t2img[t]).unwrap()
            })
            .collect();
        RetrievalRanks { i2t, t2i }
    }

    #[test]
    fn perfect_and_hand_computed() {
        // 3 images, 2 texts each; the diagonal blocks are highest except image 2,
        // whose texts rank 2nd and 3rd in its row.
        let t2img = [0, 0, 1, 1, 2, 2];
        #[rustfmt::skip]
        let sim = [
            0.9, 0.8, 0.1, 0.1, 0.0, 0.0,
            0.1, 0.1, 0.7, 0.9, 0.0, 0.0,
            0.95, 0.1, 0.1, 0.1, 0.5, 0.6,
        ];
        let r = retrieval_ranks(&sim, 3, &t2img).unwrap();
        assert_eq!(r.i2t, vec![1, 1, 2]);
        // Text 0: column [0.9, 0.1, 0.95] -> its image 0 ranks 2nd.
        assert_eq!(r.t2i, vec![2, 1, 1, 1, 1, 1]);
        let s = RetrievalScores::from_ranks(&r).unwrap();
        assert_eq!(s.i2t, [2.0 / 3.0, 1.0, 1.0]);
        assert_eq!(s.t2i, [5.0 / 6.0, 1.0, 1.0]);
        assert_eq!(s.i2t_mean_rank, 4.0 / 3.0);
        assert_eq!(s.i2t_median_rank, 1.0);
        assert_eq!(s.t2i_median_rank, 1.0);
        assert_eq!((s.n_images, s.n_texts), (3, 6));
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // Every similarity equal: candidate 0 always ranks first.
        let t2img = [0, 1, 2];
        let r = retrieval_ranks(&[0.5; 9], 3, &t2img).unwrap();
        assert_eq!(r.i2t, vec![1, 2, 3]);
        assert_eq!(r.t2i, vec![1, 2, 3]);
        // Image 1 owns texts 1 and 2, tied with text 0 in its row: best rank is 2.
        let r = retrieval_ranks(&[0.0; 6], 2, &[0, 1, 1]).unwrap();
        assert_eq!(r.i2t, vec![1, 2]);
    }

    #[test]
    fn matches_sorting_on_random_scores() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Few distinct values, so ties are frequent.
            ((state >> 33) % 17) as f32 / 4.0 - 2.0
        };
        for (n_images, per) in [(1, 1), (5, 1), (7, 3), (20, 5)] {
            let t2img: Vec<usize> = (0..n_images * per)
                .map(|t| (t * 3 + 1) % n_images)
                .collect();
            let sim: Vec<f32> = (0..n_images * t2img.len()).map(|_| next()).collect();
            let got = retrieval_ranks(&sim, n_images, &t2img).unwrap();
            assert_eq!(
                got,
                ranks_by_sorting(&sim, n_images, &t2img),
                "{n_images}x{per}"
            );
        }
    }

    #[test]
    fn median_of_even_count() {
        assert_eq!(median(&[4, 1, 2, 10]), 3.0);
        assert_eq!(median(&[3]), 3.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            recall_at_k(&[], 0, &[]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            recall_at_k(&[0.0; 5], 2, &[0, 1, 1]),
            Err(MetricsError::Length {
                expected: 6,
                got: 5,
                ..
            })
        ));
        let e = recall_at_k(&[0.0; 4], 2, &[0, 2]).unwrap_err();
        assert!(e.to_string().contains("text 1 names image 2"), "{e}");
        let e = recall_at_k(&[0.0; 4], 2, &[0, 0]).unwrap_err();
        assert!(e.to_string().contains("image 1 has no text"), "{e}");
        let e = recall_at_k(&[0.0, 0.0, f32::NAN, 0.0], 2, &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("NaN at image 1, text 0"), "{e}");
    }
}
