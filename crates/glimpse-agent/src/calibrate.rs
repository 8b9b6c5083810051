//! A calibrated match score for `image-text-matching`: one probability that both ranks
//! images for a text and answers "is there X?" with yes at 0.5.
//!
//! BLIP's ITM head was trained on whole captions against hard negatives, so it gives
//! about 0 to a true description of one object of a multi-object scene ("a blue cross"
//! of "two medium blue crosses on a green background"): its probability neither ranks
//! such texts nor decides them. The ITC cosine keeps ranking them. A logistic
//! regression over the cosine and the ITM logit, `p = sigmoid(w_c * cos + w_i *
//! logit(itm) + b)`, fitted on object descriptions of the world's validation scenes
//! (a present object against absent ones), turns both into one probability. It lies
//! beside the model as `match_calibration.json`; the agent's backend applies it when
//! present (see [`crate::backends`]).

use std::path::Path;

use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_models::pipeline::Pipeline;
use glimpse_synth::{sample, SampleJson, Split, SynthConfig, COLORS, SHAPES, SIZES};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file next to a model's `config.json`.
pub const FILE: &str = "match_calibration.json";

/// ITM probabilities are clamped into `[EPS, 1 - EPS]` before their logit.
const EPS: f32 = 1e-6;

/// `p = sigmoid(cosine * itc + itm * logit(itm_probability) + bias)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub cosine: f32,
    /// Zero for a model without an ITM head.
    pub itm: f32,
    pub bias: f32,
}

impl Weights {
    /// The calibrated match probability.
    pub fn probability(&self, cosine: f32, itm: Option<f32>) -> f32 {
        let z = self.cosine * cosine + self.itm * itm.map_or(0.0, logit) + self.bias;
        sigmoid(z)
    }
}

/// What `match_calibration.json` holds: the weights and how they were fitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub weights: Weights,
    /// Where the pairs came from (`world seed 0, validation split, N scenes`).
    pub fitted_on: String,
    /// Pairs fitted on (half present objects, half absent).
    pub pairs: usize,
    /// Shares on held-out validation pairs and scenes; see [`Measured`].
    pub measured: Measured,
}

/// Accuracy of each score on held-out validation data (not the pairs fitted on).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    /// yes/no right at 0.5 (ITM probability), at the best cosine threshold of the fit
    /// pairs, and with the calibrated probability.
    pub yes_no_itm: f64,
    pub yes_no_cosine: f64,
    pub yes_no_calibrated: f64,
    /// "Which of these images has X?": the image ranked first is the one with X,
    /// over 2-4 images, by each score.
    pub rank_itm: f64,
    pub rank_cosine: f64,
    pub rank_calibrated: f64,
    pub rank_questions: usize,
    pub yes_no_pairs: usize,
}

impl Calibration {
    /// Reads `DIR/match_calibration.json`; `None` when the model has none.
    pub fn load(model_dir: &Path) -> Result<Option<Self>> {
        let path = model_dir.join(FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let fail = |msg: String| Error::Model {
            model: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| fail(format!("not a match calibration: {e}")))
    }

    pub fn save(&self, model_dir: &Path) -> Result<()> {
        let path = model_dir.join(FILE);
        let text = serde_json::to_string_pretty(self).expect("a calibration serialises") + "\n";
        glimpse_data::atomic::write(&path, text.as_bytes())
            .map_err(|(p, e)| Error::Io(format!("{}: {e}", p.display())))
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

fn with_article(phrase: &str) -> String {
    let vowel = phrase.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {phrase}", if vowel { "an" } else { "a" })
}

/// A description of one object, sometimes with its size, as requests name objects.
fn describe(rng: &mut Rng, color: &str, shape: &str, size: &str) -> String {
    if rng.unit() < 0.25 {
        with_article(&format!("{size} {color} {shape}"))
    } else {
        with_article(&format!("{color} {shape}"))
    }
}

fn has(r: &SampleJson, color: &str, shape: &str) -> bool {
    r.objects
        .iter()
        .any(|o| o.color == color && o.shape == shape)
}

/// A colour and shape no object of `r` has: half the time a shape absent from the
/// scene, else a present shape in a colour it does not have there.
fn absent(rng: &mut Rng, r: &SampleJson) -> (String, String) {
    let shape_absent = rng.unit() < 0.5;
    loop {
        let c = COLORS[rng.below_from_high_bits(COLORS.len())].0;
        let s = if shape_absent {
            SHAPES[rng.below_from_high_bits(SHAPES.len())].0
        } else {
            &r.objects[rng.below_from_high_bits(r.objects.len())].shape
        };
        let shape_there = r.objects.iter().any(|o| o.shape == s);
        if !has(r, c, s) && (shape_absent != shape_there) {
            return (c.to_string(), s.to_string());
        }
    }
}

/// One scored description: cosine, ITM probability, whether the object is there.
#[derive(Debug, Clone, Copy)]
struct Pair {
    cosine: f32,
    itm: Option<f32>,
    present: bool,
}

/// The validation scenes of the world with `seed` (the split `glimpse data synth`
/// writes to `val/` with the default fractions).
fn val_scenes(seed: u64, count: usize) -> Vec<glimpse_synth::Sample> {
    let cfg = SynthConfig {
        seed,
        count: u64::MAX / 2,
        ..SynthConfig::default()
    };
    (0..)
        .filter(|&i| cfg.split_of(i) == Split::Val)
        .take(count)
        .map(|i| sample(&cfg, i))
        .collect()
}

fn score(p: &Pipeline, image: &image::RgbImage, text: &str) -> Result<(f32, Option<f32>)> {
    let s = p.match_scores(image, &[text]).map_err(|e| Error::Model {
        model: "the model being calibrated".into(),
        msg: e.to_string(),
    })?;
    Ok((s.itc[0], s.itm.map(|v| v[0])))
}

/// Fits [`Weights`] by logistic regression (full-batch gradient descent on
/// standardised features, then mapped back).
fn fit(pairs: &[Pair]) -> Weights {
    let feats: Vec<[f32; 2]> = pairs
        .iter()
        .map(|p| [p.cosine, p.itm.map_or(0.0, logit)])
        .collect();
    let n = feats.len() as f32;
    let mean = |k: usize| feats.iter().map(|f| f[k]).sum::<f32>() / n;
    let m = [mean(0), mean(1)];
    let sd = |k: usize| {
        let v = feats.iter().map(|f| (f[k] - m[k]).powi(2)).sum::<f32>() / n;
        v.sqrt().max(1e-6)
    };
    let s = [sd(0), sd(1)];
    let (mut w, mut b) = ([0f32; 2], 0f32);
    for _ in 0..3000 {
        let (mut gw, mut gb) = ([0f32; 2], 0f32);
        for (f, p) in feats.iter().zip(pairs) {
            let x = [(f[0] - m[0]) / s[0], (f[1] - m[1]) / s[1]];
            let err = sigmoid(w[0] * x[0] + w[1] * x[1] + b) - f32::from(u8::from(p.present));
            gw[0] += err * x[0];
            gw[1] += err * x[1];
            gb += err;
        }
        for k in 0..2 {
            w[k] -= 0.5 * (gw[k] / n + 1e-4 * w[k]);
        }
        b -= 0.5 * gb / n;
    }
    let (wc, wi) = (w[0] / s[0], w[1] / s[1]);
    Weights {
        cosine: wc,
        itm: wi,
        bias: b - wc * m[0] - wi * m[1],
    }
}

/// The cosine threshold that decides the fit pairs best.
fn best_cosine_threshold(pairs: &[Pair]) -> f32 {
    let mut cands: Vec<f32> = pairs.iter().map(|p| p.cosine).collect();
    cands.sort_by(f32::total_cmp);
    let right = |t: f32| {
        pairs
            .iter()
            .filter(|p| (p.cosine >= t) == p.present)
            .count()
    };
    cands.into_iter().max_by_key(|&t| right(t)).unwrap_or(0.5)
}

/// Fits the calibration of `model` on `scenes` validation scenes of the world with
/// `seed` (half for the fit, half to measure), calling `progress` per scene.
pub fn calibrate(
    model: &Pipeline,
    seed: u64,
    scenes: usize,
    mut progress: impl FnMut(),
) -> Result<Calibration> {
    if scenes < 8 {
        return Err(Error::Request(format!(
            "calibration needs at least 8 scenes, got {scenes}"
        )));
    }
    let all = val_scenes(seed, scenes);
    let mut rng = Rng::salted(0xca11b, seed, scenes as u64, 0);
    let (fit_scenes, held) = all.split_at(scenes / 2);
    let mut pairs_of = |set: &[glimpse_synth::Sample], rng: &mut Rng| -> Result<Vec<Pair>> {
        let mut out = Vec::new();
        for s in set {
            let r = &s.record;
            let o = &r.objects[rng.below_from_high_bits(r.objects.len())];
            let yes = describe(rng, &o.color, &o.shape, &o.size);
            let (c, sh) = absent(rng, r);
            let size = SIZES[rng.below_from_high_bits(SIZES.len())].0;
            let no = describe(rng, &c, &sh, size);
            for (text, present) in [(yes, true), (no, false)] {
                let (cosine, itm) = score(model, &s.image, &text)?;
                out.push(Pair {
                    cosine,
                    itm,
                    present,
                });
            }
            progress();
        }
        Ok(out)
    };
    let fit_pairs = pairs_of(fit_scenes, &mut rng)?;
    let weights = fit(&fit_pairs);
    let cos_t = best_cosine_threshold(&fit_pairs);
    let held_pairs = pairs_of(held, &mut rng)?;
    let share = |ok: usize, n: usize| ok as f64 / n.max(1) as f64;
    let yes_no = |decide: &dyn Fn(&Pair) -> bool| {
        share(
            held_pairs.iter().filter(|p| decide(p) == p.present).count(),
            held_pairs.len(),
        )
    };
    let mut measured = Measured {
        yes_no_itm: yes_no(&|p| p.itm.unwrap_or(p.cosine) >= 0.5),
        yes_no_cosine: yes_no(&|p| p.cosine >= cos_t),
        yes_no_calibrated: yes_no(&|p| weights.probability(p.cosine, p.itm) >= 0.5),
        yes_no_pairs: held_pairs.len(),
        ..Measured::default()
    };
    // Ranking: a held-out scene's object among 1-3 other held-out scenes without it.
    let (mut itm_ok, mut cos_ok, mut cal_ok, mut asked) = (0, 0, 0, 0);
    for (i, t) in held.iter().enumerate() {
        let o = &t.record.objects[0];
        let text = with_article(&format!("{} {}", o.color, o.shape));
        let want = 1 + i % 3;
        let others: Vec<&glimpse_synth::Sample> = held
            .iter()
            .cycle()
            .skip(i + 1)
            .take(held.len())
            .filter(|s| !has(&s.record, &o.color, &o.shape))
            .take(want)
            .collect();
        if others.len() < want {
            continue;
        }
        let (c0, m0) = score(model, &t.image, &text)?;
        let mut best = [true; 3];
        for s in others {
            let (c, m) = score(model, &s.image, &text)?;
            best[0] &= m.unwrap_or(c) < m0.unwrap_or(c0);
            best[1] &= c < c0;
            best[2] &= weights.probability(c, m) < weights.probability(c0, m0);
        }
        itm_ok += usize::from(best[0]);
        cos_ok += usize::from(best[1]);
        cal_ok += usize::from(best[2]);
        asked += 1;
        progress();
    }
    measured.rank_itm = share(itm_ok, asked);
    measured.rank_cosine = share(cos_ok, asked);
    measured.rank_calibrated = share(cal_ok, asked);
    measured.rank_questions = asked;
    Ok(Calibration {
        weights,
        fitted_on: format!(
            "world seed {seed}, validation split: {} scenes fitted, {} held out",
            fit_scenes.len(),
            held.len()
        ),
        pairs: fit_pairs.len(),
        measured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_separates_what_the_cosine_separates() {
        // Present objects at cosine 0.6-0.7, absent at 0.4-0.5, ITM near 0 for both:
        // the fitted probability must put each side on its side of 0.5.
        let mut pairs = Vec::new();
        for i in 0..50 {
            let d = i as f32 / 500.0;
            pairs.push(Pair {
                cosine: 0.6 + d,
                itm: Some(0.001),
                present: true,
            });
            pairs.push(Pair {
                cosine: 0.4 + d,
                itm: Some(0.001 + d / 100.0),
                present: false,
            });
        }
        let w = fit(&pairs);
        for p in &pairs {
            assert_eq!(
                w.probability(p.cosine, p.itm) >= 0.5,
                p.present,
                "{p:?} {w:?}"
            );
        }
        assert!(w.cosine > 0.0, "{w:?}");
    }

    #[test]
    fn probability_is_monotone_in_the_cosine_and_bounded() {
        let w = Weights {
            cosine: 12.0,
            itm: 0.3,
            bias: -7.0,
        };
        let (lo, hi) = (w.probability(0.3, Some(0.0)), w.probability(0.8, Some(0.0)));
        assert!(lo < hi && lo > 0.0 && hi < 1.0);
        // An ITM of exactly 0 or 1 is clamped, not infinite.
        assert!(w.probability(0.5, Some(1.0)).is_finite());
        assert!(w.probability(0.5, None).is_finite());
    }

    #[test]
    fn absent_descriptions_are_absent() {
        let scenes = val_scenes(0, 20);
        let mut rng = Rng::salted(1, 2, 3, 4);
        for s in &scenes {
            for _ in 0..10 {
                let (c, sh) = absent(&mut rng, &s.record);
                assert!(!has(&s.record, &c, &sh));
            }
            assert_eq!(s.record.split, "val");
        }
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Calibration::load(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        let e = Calibration::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE), "{e}");
    }
}
