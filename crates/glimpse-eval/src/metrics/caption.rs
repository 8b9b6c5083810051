//! Caption metrics: corpus BLEU-1..4 and CIDEr-D, computed as the COCO caption
//! evaluation toolkit computes them (pycocoevalcap 1.2, `bleu/bleu_scorer.py` and
//! `cider/cider_scorer.py`), quirks included, so numbers can be set beside published
//! ones. `tools/metrics_reference.py` runs that toolkit on fixed corpora; the tests
//! below match its output.
//!
//! Tokenisation. The toolkit runs the Stanford PTB tokenizer (Java) first and drops
//! punctuation tokens. Here that is simplified to: lowercase, delete every ASCII
//! punctuation character, split on whitespace. The two agree on plain lowercase
//! captions; they differ where PTB splits inside a word (`don't` -> `do n't`, here
//! `dont`; `top-left` stays one PTB token, here `topleft`) and on non-ASCII
//! punctuation, which is kept here.
//!
//! BLEU (`BleuScorer.compute_score(option="closest")`): per image, n-gram counts of
//! the candidate clipped by the maximum count in any one reference, the candidate
//! length, and the length of the reference closest to it (the shorter one on a tie).
//! Corpus BLEU-n sums clipped counts, n-gram totals and lengths over images, then is
//! `(prod_{k<=n} (correct_k + 1e-15) / (total_k + 1e-9))^(1/n)` times the brevity
//! penalty `exp(1 - r/c)` when `c < r`. The 1e-15/1e-9 smoothing is the toolkit's: a
//! zero precision gives a tiny positive score, not 0.
//!
//! CIDEr-D (`CiderScorer`, the toolkit's "CIDEr"): n = 1..4; document frequencies
//! counted over the evaluated corpus's reference sets (an n-gram counts once per image
//! whose references contain it), idf `ln(N) - ln(max(1, df))`; tf-idf vectors per
//! order; per reference, the candidate weight of each n-gram is clipped to the
//! reference weight before the dot product, divided by both norms (skipped when one is
//! zero), and multiplied by `exp(-(l_c - l_r)^2 / (2 * 6^2))`; averaged over the 4
//! orders and the references, times 10, then averaged over images. The lengths `l` are
//! the toolkit's: the number of *bigrams* of the sentence (max(0, words - 1)), a quirk
//! of `counts2vec` that is kept because published scores carry it. With one image
//! every idf is 0, so CIDEr-D is 0.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{check_len, invalid, MetricsError, Result};

/// Highest n-gram order of both metrics.
const MAX_N: usize = 4;
/// The toolkit's smoothing of BLEU precisions (numerator, denominator).
const BLEU_TINY: f64 = 1e-15;
const BLEU_SMALL: f64 = 1e-9;
/// Standard deviation of CIDEr-D's Gaussian length penalty.
const CIDER_SIGMA: f64 = 6.0;

/// Lowercase, delete ASCII punctuation, split on whitespace (see the module doc for
/// how this differs from PTB tokenisation).
pub fn tokenize_caption(text: &str) -> Vec<String> {
    let clean: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    clean.split_whitespace().map(str::to_owned).collect()
}

/// Corpus BLEU-1..4 (`bleu[n - 1]`), the toolkit's per-image BLEU (same formula on
/// one image's counts, as pycocoevalcap returns it), and the summed candidate and
/// effective reference lengths behind the brevity penalty.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScores {
    pub bleu: [f64; MAX_N],
    pub per_image: Vec<[f64; MAX_N]>,
    pub candidate_len: usize,
    pub reference_len: usize,
}

/// Corpus CIDEr-D (the mean of `per_image`), on the toolkit's 0..10 scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CiderScores {
    pub cider: f64,
    pub per_image: Vec<f64>,
}

/// Both caption metrics over one corpus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionScores {
    pub bleu: BleuScores,
    pub cider: CiderScores,
}

/// A tokenised corpus: per image one candidate and one or more references.
struct Corpus {
    candidates: Vec<Vec<String>>,
    references: Vec<Vec<Vec<String>>>,
}

impl Corpus {
    fn new<C, R, S>(candidates: &[C], references: &[R]) -> Result<Self>
    where
        C: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        if candidates.is_empty() {
            return Err(MetricsError::Empty { what: "candidates" });
        }
        check_len(
            "references (one list per candidate)",
            candidates.len(),
            references.len(),
        )?;
        if let Some(i) = references.iter().position(|r| r.as_ref().is_empty()) {
            return Err(invalid(
                "references",
                format!("image {i} has no reference caption"),
            ));
        }
        Ok(Corpus {
            candidates: candidates
                .iter()
                .map(|c| tokenize_caption(c.as_ref()))
                .collect(),
            references: references
                .iter()
                .map(|r| {
                    r.as_ref()
                        .iter()
                        .map(|s| tokenize_caption(s.as_ref()))
                        .collect()
                })
                .collect(),
        })
    }
}

/// Counts of the 1- to 4-grams of a sentence; an n-gram is a slice of its words.
fn ngram_counts(words: &[String]) -> HashMap<&[String], u32> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_N.min(words.len()) {
        for gram in words.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU-1..4 from clipped n-gram matches, n-gram totals and lengths.
fn bleu_from(correct: &[usize; MAX_N], total: &[usize; MAX_N], cand: f64, refs: f64) -> [f64; 4] {
    let mut out = [0.0; MAX_N];
    let mut product = 1.0;
    for k in 0..MAX_N {
        product *= (correct[k] as f64 + BLEU_TINY) / (total[k] as f64 + BLEU_SMALL);
        out[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (cand + BLEU_TINY) / (refs + BLEU_SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for v in &mut out {
            *v *= penalty;
        }
    }
    out
}

fn bleu(corpus: &Corpus) -> BleuScores {
    let mut sum_correct = [0usize; MAX_N];
    let mut sum_total = [0usize; MAX_N];
    let (mut sum_cand, mut sum_ref) = (0usize, 0usize);
    let mut per_image = Vec::with_capacity(corpus.candidates.len());
    for (cand, refs) in corpus.candidates.iter().zip(&corpus.references) {
        let mut max_ref: HashMap<&[String], u32> = HashMap::new();
        for r in refs {
            for (gram, n) in ngram_counts(r) {
                let m = max_ref.entry(gram).or_insert(0);
                *m = (*m).max(n);
            }
        }
        let mut correct = [0usize; MAX_N];
        for (gram, n) in ngram_counts(cand) {
            correct[gram.len() - 1] += n.min(max_ref.get(gram).copied().unwrap_or(0)) as usize;
        }
        let total: [usize; MAX_N] = std::array::from_fn(|k| cand.len().saturating_sub(k));
        let c = cand.len();
        // Closest reference length, the shorter on a tie; `refs` is never empty.
        let r = refs
            .iter()
            .map(Vec::len)
            .min_by_key(|&l| (l.abs_diff(c), l))
            .unwrap_or(0);
        per_image.push(bleu_from(&correct, &total, c as f64, r as f64));
        for k in 0..MAX_N {
            sum_correct[k] += correct[k];
            sum_total[k] += total[k];
        }
        sum_cand += c;
        sum_ref += r;
    }
    BleuScores {
        bleu: bleu_from(&sum_correct, &sum_total, sum_cand as f64, sum_ref as f64),
        per_image,
        candidate_len: sum_cand,
        reference_len: sum_ref,
    }
}

/// A sentence as CIDEr sees it: tf-idf weight per n-gram, the norm per order, and the
/// toolkit's length (bigram count).
struct TfIdf<'a> {
    weights: HashMap<&'a [String], f64>,
    norms: [f64; MAX_N],
    length: f64,
}

impl<'a> TfIdf<'a> {
    fn new(words: &'a [String], df: &HashMap<&[String], f64>, log_n: f64) -> Self {
        let mut weights = HashMap::new();
        let mut norms = [0.0; MAX_N];
        for (gram, tf) in ngram_counts(words) {
            let df = df.get(gram).copied().unwrap_or(0.0).max(1.0);
            let w = tf as f64 * (log_n - df.ln());
            norms[gram.len() - 1] += w * w;
            weights.insert(gram, w);
        }
        TfIdf {
            weights,
            norms: norms.map(f64::sqrt),
            length: words.len().saturating_sub(1) as f64,
        }
    }

    /// Per-order clipped cosine similarity with `reference`, length-penalised.
    fn similarity(&self, reference: &TfIdf) -> [f64; MAX_N] {
        let mut val = [0.0; MAX_N];
        for (gram, &w) in &self.weights {
            let r = reference.weights.get(gram).copied().unwrap_or(0.0);
            val[gram.len() - 1] += w.min(r) * r;
        }
        let delta = self.length - reference.length;
        let penalty =
            std::f64::consts::E.powf(-(delta * delta) / (2.0 * CIDER_SIGMA * CIDER_SIGMA));
        for ((v, &a), &b) in val.iter_mut().zip(&self.norms).zip(&reference.norms) {
            if a != 0.0 && b != 0.0 {
                *v /= a * b;
            }
            *v *= penalty;
        }
        val
    }
}

fn cider(corpus: &Corpus) -> CiderScores {
    let mut df: HashMap<&[String], f64> = HashMap::new();
    for refs in &corpus.references {
        let grams: HashSet<&[String]> = refs
            .iter()
            .flat_map(|r| ngram_counts(r).into_keys())
            .collect();
        for gram in grams {
            *df.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_n = (corpus.references.len() as f64).ln();
    let per_image: Vec<f64> = corpus
        .candidates
        .iter()
        .zip(&corpus.references)
        .map(|(cand, refs)| {
            let c = TfIdf::new(cand, &df, log_n);
            let mut sum = [0.0; MAX_N];
            for r in refs {
                let sim = c.similarity(&TfIdf::new(r, &df, log_n));
                for n in 0..MAX_N {
                    sum[n] += sim[n];
                }
            }
            sum.iter().sum::<f64>() / MAX_N as f64 / refs.len() as f64 * 10.0
        })
        .collect();
    CiderScores {
        cider: per_image.iter().sum::<f64>() / per_image.len() as f64,
        per_image,
    }
}

/// Corpus BLEU-1..4 of `candidates[i]` against `references[i]` (raw text; tokenised
/// with [`tokenize_caption`]). Every image needs at least one reference (an empty
/// reference string is allowed); an empty candidate is allowed and scores 0.
///
/// Errors: no candidates, a different number of reference lists, an image without
/// references.
pub fn corpus_bleu<C, R, S>(candidates: &[C], references: &[R]) -> Result<BleuScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Ok(bleu(&Corpus::new(candidates, references)?))
}

/// Corpus CIDEr-D; arguments and errors as [`corpus_bleu`]. The document frequencies
/// come from this corpus's references, so a score depends on the whole evaluated set,
/// not on each image alone.
pub fn corpus_cider<C, R, S>(candidates: &[C], references: &[R]) -> Result<CiderScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Ok(cider(&Corpus::new(candidates, references)?))
}

/// BLEU-1..4 and CIDEr-D together, tokenising once; as [`corpus_bleu`].
pub fn caption_scores<C, R, S>(candidates: &[C], references: &[R]) -> Result<CaptionScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    let corpus = Corpus::new(candidates, references)?;
    Ok(CaptionScores {
        bleu: bleu(&corpus),
        cider: cider(&corpus),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        corpora: Vec<FixtureCorpus>,
    }

    #[derive(Deserialize)]
    struct FixtureCorpus {
        name: String,
        candidates: Vec<String>,
        references: Vec<Vec<String>>,
        candidates_tokenized: Vec<String>,
        references_tokenized: Vec<Vec<String>>,
        bleu: [f64; 4],
        bleu_per_image: Vec<[f64; 4]>,
        cider: f64,
        cider_per_image: Vec<f64>,
    }

    fn fixture() -> Fixture {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/fixtures/metrics/captions.json"
        );
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run tools/metrics_reference.py)"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Largest difference seen, with where it was. A value fails beyond 1e-12 plus
    /// 1e-9 of its size: the smoothed BLEU of a zero precision is around 1e-7, so a
    /// plain absolute tolerance would not look at it.
    struct Compare {
        worst: f64,
        at: String,
        failures: Vec<String>,
    }

    impl Compare {
        fn new() -> Self {
            Compare {
                worst: 0.0,
                at: String::new(),
                failures: Vec::new(),
            }
        }

        fn check(&mut self, what: String, got: f64, want: f64) {
            let d = (got - want).abs();
            if d > self.worst {
                self.worst = d;
                self.at = what.clone();
            }
            if d > 1e-12 + 1e-9 * want.abs() || !got.is_finite() {
                self.failures.push(format!(
                    "{what}: got {got:.12}, pycocoevalcap {want:.12} (diff {d:.3e})"
                ));
            }
        }
    }

    #[test]
    fn matches_pycocoevalcap() {
        let mut cmp = Compare::new();
        for c in fixture().corpora {
            let toks: Vec<String> = c
                .candidates
                .iter()
                .map(|s| tokenize_caption(s).join(" "))
                .collect();
            assert_eq!(toks, c.candidates_tokenized, "{}: candidate tokens", c.name);
            let rtoks: Vec<Vec<String>> = c
                .references
                .iter()
                .map(|r| r.iter().map(|s| tokenize_caption(s).join(" ")).collect())
                .collect();
            assert_eq!(
                rtoks, c.references_tokenized,
                "{}: reference tokens",
                c.name
            );

            let s = caption_scores(&c.candidates, &c.references).unwrap();
            for n in 0..4 {
                cmp.check(
                    format!("{} BLEU-{}", c.name, n + 1),
                    s.bleu.bleu[n],
                    c.bleu[n],
                );
                for (i, (got, want)) in s.bleu.per_image.iter().zip(&c.bleu_per_image).enumerate() {
                    cmp.check(
                        format!("{} image {i} BLEU-{}", c.name, n + 1),
                        got[n],
                        want[n],
                    );
                }
            }
            cmp.check(format!("{} CIDEr-D", c.name), s.cider.cider, c.cider);
            assert_eq!(s.cider.per_image.len(), c.cider_per_image.len());
            for (i, (&got, &want)) in s.cider.per_image.iter().zip(&c.cider_per_image).enumerate() {
                cmp.check(format!("{} image {i} CIDEr-D", c.name), got, want);
            }
            println!(
                "{:>15}: BLEU-4 {:.6} (ref {:.6})  CIDEr-D {:.6} (ref {:.6})",
                c.name, s.bleu.bleu[3], c.bleu[3], s.cider.cider, c.cider
            );
        }
        println!("largest difference {:.3e} at {}", cmp.worst, cmp.at);
        assert!(cmp.failures.is_empty(), "{}", cmp.failures.join("\n"));
    }

    #[test]
    fn tokenizer_rule() {
        assert_eq!(
            tokenize_caption("  A Red circle, in the TOP-left!\n"),
            ["a", "red", "circle", "in", "the", "topleft"]
        );
        assert!(tokenize_caption("?!. ,").is_empty());
    }

    #[test]
    fn identical_captions_score_one_bleu() {
        let refs = [vec!["a red circle on a blue background"]];
        let b = corpus_bleu(&["A red circle on a blue background."], &refs).unwrap();
        for v in b.bleu {
            assert!((v - 1.0).abs() < 1e-9, "{v}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let none: [&str; 0] = [];
        let no_refs: [Vec<&str>; 0] = [];
        assert!(matches!(
            corpus_bleu(&none, &no_refs),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            corpus_cider(&["a"], &[vec!["a"], vec!["b"]]),
            Err(MetricsError::Length { .. })
        ));
        let empty: Vec<&str> = Vec::new();
        let e = caption_scores(&["a", "b"], &[vec!["a"], empty]).unwrap_err();
        assert!(e.to_string().contains("image 1 has no reference"), "{e}");
    }
}
