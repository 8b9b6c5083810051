//! Hard negative captions (NegCLIP, <https://arxiv.org/abs/2210.01936>): a caption
//! with one attribute word swapped for another of its kind — a shape, a colour, a
//! size, a row or column word — so the contrastive loss must tell "a blue circle" from
//! "a blue star", which colour statistics alone cannot.

use glimpse_data::rng::SplitMix64;
use glimpse_synth::vocab::{COLORS, SHAPES, SIZES};

const ROWS: [&str; 3] = ["top", "middle", "bottom"];
const COLUMNS: [&str; 2] = ["left", "right"];

/// The kind of a word and the alternatives of the same kind (same number for shapes).
fn alternatives(word: &str) -> Option<(usize, Vec<&'static str>)> {
    if let Some(i) = SHAPES.iter().position(|s| s.0 == word) {
        return Some((
            0,
            SHAPES
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.0)
                .collect(),
        ));
    }
    if let Some(i) = SHAPES.iter().position(|s| s.1 == word) {
        return Some((
            0,
            SHAPES
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.1)
                .collect(),
        ));
    }
    let others = |list: &[&'static str]| -> Vec<&'static str> {
        list.iter().copied().filter(|w| *w != word).collect()
    };
    let colors: Vec<&'static str> = COLORS.iter().map(|c| c.0).collect();
    if colors.contains(&word) {
        return Some((1, others(&colors)));
    }
    let sizes: Vec<&'static str> = SIZES.iter().map(|s| s.0).collect();
    if sizes.contains(&word) {
        return Some((2, others(&sizes)));
    }
    if ROWS.contains(&word) {
        return Some((3, others(&ROWS)));
    }
    if COLUMNS.contains(&word) {
        return Some((3, others(&COLUMNS)));
    }
    None
}

/// Kinds of attribute words, as [`swap_attribute_of_kind`] takes them.
pub const SHAPE: usize = 0;

/// `caption` with one attribute word replaced, or `None` when it names no attribute.
/// The kind is drawn uniformly among the kinds present, then the word, then its
/// replacement.
pub fn swap_attribute(caption: &str, rng: &mut SplitMix64) -> Option<String> {
    swap_attribute_of_kind(caption, None, rng)
}

/// [`swap_attribute`], swapping a word of kind `prefer` (e.g. [`SHAPE`]) when the
/// caption has one.
pub fn swap_attribute_of_kind(
    caption: &str,
    prefer: Option<usize>,
    rng: &mut SplitMix64,
) -> Option<String> {
    let words: Vec<&str> = caption.split(' ').collect();
    let found: Vec<(usize, usize, Vec<&'static str>)> = words
        .iter()
        .enumerate()
        .filter_map(|(i, w)| alternatives(w).map(|(k, alt)| (i, k, alt)))
        .collect();
    if found.is_empty() {
        return None;
    }
    let mut kinds: Vec<usize> = found.iter().map(|f| f.1).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let kind = match prefer {
        Some(k) if kinds.contains(&k) => k,
        _ => kinds[rng.below_from_unit(kinds.len())],
    };
    let of_kind: Vec<&(usize, usize, Vec<&'static str>)> =
        found.iter().filter(|f| f.1 == kind).collect();
    let (at, _, alt) = of_kind[rng.below_from_unit(of_kind.len())];
    let mut out: Vec<&str> = words.clone();
    out[*at] = alt[rng.below_from_unit(alt.len())];
    Some(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_exactly_one_attribute_word() {
        let mut rng = SplitMix64::new(1);
        let cap = "a large blue circle in the top left";
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..200 {
            let neg = swap_attribute(cap, &mut rng).unwrap();
            assert_ne!(neg, cap);
            let diff: Vec<(&str, &str)> = cap
                .split(' ')
                .zip(neg.split(' '))
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(diff.len(), 1, "{neg}");
            kinds.insert(diff[0].0);
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}"); // large, blue, circle, top, left
        assert_eq!(swap_attribute("stock photo", &mut rng), None);
        for _ in 0..20 {
            let n = swap_attribute_of_kind(cap, Some(SHAPE), &mut rng).unwrap();
            assert!(
                n.starts_with("a large blue ") && !n.contains("circle"),
                "{n}"
            );
        }
        let plural = swap_attribute("two red stars", &mut SplitMix64::new(7)).unwrap();
        assert!(plural.split(' ').count() == 3);
    }
}
