//! What a CapFilt run does, with BLIP's defaults.
//!
//! BLIP's captioner for CapFilt (`BLIP_Decoder.generate` in salesforce/BLIP
//! `models/blip.py`, called with `sample=True`): nucleus sampling with `top_p` 0.9,
//! prompt `"a picture of "`, `min_length` 10 and `max_length` 30, and a repetition
//! penalty of 1.1 that the sampling branch hard-codes (the beam branch, 3 beams by
//! default, uses the `repetition_penalty` argument, 1.0). Those lengths are the
//! reference `generate`'s: they count the start token and the prompt (`[DEC] a picture
//! of` is 4 tokens with BERT's vocabulary), so [`CapfiltOptions::new_token_limits`]
//! turns them into new-token limits for the prompt actually used. (BLIP's COCO
//! captioning config, `configs/caption_coco.yaml`, evaluates with 5 / 20 and 3 beams;
//! CapFilt uses `generate`'s defaults.) The filter removes a text whose ITM match
//! probability is below 0.5, for web and synthetic texts alike.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the captioner chooses tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    Nucleus { top_p: f32 },
    /// Beam search with `beams` beams (BLIP's ablation: less diverse, less noisy).
    Beam { beams: usize },
}

/// Settings of one CapFilt run. They are stored in the output directory, and a
/// resumed run must use the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapfiltOptions {
    pub decoding: Decoding,
    /// Text every synthetic caption continues; it is not part of the caption written.
    /// Empty: captions start from the start token alone.
    pub prompt: String,
    /// Shortest and longest caption in tokens, counted as BLIP counts them: the start
    /// token and the prompt included.
    pub min_length: usize,
    pub max_length: usize,
    /// Scores of tokens already present are divided by it (1.0: off).
    pub repetition_penalty: f32,
    /// Synthetic captions per image (samples with nucleus, the best beams with beams).
    pub captions_per_image: usize,
    /// A text is kept when its ITM match probability is at least this.
    pub threshold: f32,
    /// Images per captioner call.
    pub batch_size: usize,
    /// Seed of the sampling; each batch draws from a generator seeded by this and the
    /// key of its first sample, so a shard gives the same captions wherever it runs.
    pub seed: u64,
}

pub const BLIP_PROMPT: &str = "a picture of";
pub const BLIP_TOP_P: f32 = 0.9;
pub const BLIP_MIN_LENGTH: usize = 10;
pub const BLIP_MAX_LENGTH: usize = 30;
pub const BLIP_SAMPLING_REPETITION_PENALTY: f32 = 1.1;
pub const BLIP_BEAM_REPETITION_PENALTY: f32 = 1.0;
pub const BLIP_BEAMS: usize = 3;
pub const BLIP_THRESHOLD: f32 = 0.5;

impl Default for CapfiltOptions {
    /// BLIP's CapFilt: nucleus sampling (p 0.9), one caption per image, threshold 0.5.
    fn default() -> Self {
        CapfiltOptions {
            decoding: Decoding::Nucleus { top_p: BLIP_TOP_P },
            prompt: BLIP_PROMPT.into(),
            min_length: BLIP_MIN_LENGTH,
            max_length: BLIP_MAX_LENGTH,
            repetition_penalty: BLIP_SAMPLING_REPETITION_PENALTY,
            captions_per_image: 1,
            threshold: BLIP_THRESHOLD,
            batch_size: 16,
            seed: 0,
        }
    }
}

impl CapfiltOptions {
    /// BLIP's beam-search ablation: `beams` beams, no repetition penalty.
    pub fn beam(beams: usize) -> Self {
        CapfiltOptions {
            decoding: Decoding::Beam { beams },
            repetition_penalty: BLIP_BEAM_REPETITION_PENALTY,
            ..Self::default()
        }
    }

    /// Refuses settings that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        match self.decoding {
            Decoding::Nucleus { top_p } => {
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(Error::option(
                        "--top-p",
                        format!("must lie in (0, 1], got {top_p}"),
                    ));
                }
            }
            Decoding::Beam { beams } => {
                if beams == 0 {
                    return Err(Error::option("--beams", "must be at least 1"));
                }
                if self.captions_per_image > beams {
                    return Err(Error::option(
                        "--captions-per-image",
                        format!(
                            "beam search returns at most its {beams} beam(s), got {}",
                            self.captions_per_image
                        ),
                    ));
                }
            }
        }
        if self.captions_per_image == 0 {
            return Err(Error::option("--captions-per-image", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(Error::option(
                "--threshold",
                format!(
                    "an ITM probability, must lie in [0, 1], got {}",
                    self.threshold
                ),
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::option(
                "--repetition-penalty",
                format!("must be a positive number, got {}", self.repetition_penalty),
            ));
        }
        if self.max_length == 0 || self.min_length > self.max_length {
            return Err(Error::option(
                "--min-length/--max-length",
                format!(
                    "need 0 <= min <= max and max >= 1, got {} and {}",
                    self.min_length, self.max_length
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::option("--batch-size", "must be at least 1"));
        }
        Ok(())
    }

    /// `(min_new_tokens, max_new_tokens)` for a prompt of `prompt_len` tokens (the
    /// start token included), from the BLIP-style total lengths.
    pub fn new_token_limits(&self, prompt_len: usize) -> Result<(usize, usize)> {
        if self.max_length <= prompt_len {
            return Err(Error::option(
                "--max-length",
                format!(
                    "{} tokens leave no room after the start token and the prompt ({prompt_len} \
                     tokens)",
                    self.max_length
                ),
            ));
        }
        Ok((
            self.min_length.saturating_sub(prompt_len),
            self.max_length - prompt_len,
        ))
    }

    /// The decoding settings for a batch (end and pad ids are the model's to add).
    pub fn generation_config(
        &self,
        prompt_len: usize,
        seed: u64,
    ) -> Result<glimpse_generate::GenerationConfig> {
        let (min_new, max_new) = self.new_token_limits(prompt_len)?;
        let base = glimpse_generate::GenerationConfig {
            max_new_tokens: max_new,
            min_new_tokens: min_new,
            repetition_penalty: self.repetition_penalty,
            num_return_sequences: self.captions_per_image,
            seed,
            ..Default::default()
        };
        let cfg = match self.decoding {
            Decoding::Nucleus { top_p } => glimpse_generate::GenerationConfig {
                do_sample: true,
                top_p,
                top_k: 0,
                ..base
            },
            Decoding::Beam { beams } => glimpse_generate::GenerationConfig {
                num_beams: beams,
                ..base
            },
        };
        cfg.validate()
            .map_err(|e| Error::option("decoding", e.to_string()))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blip_lengths_count_the_prompt() {
        let o = CapfiltOptions::default();
        // `[DEC] a picture of`: 4 tokens, as in BLIP.
        assert_eq!(o.new_token_limits(4).unwrap(), (6, 26));
        // No prompt: only the start token.
        assert_eq!(o.new_token_limits(1).unwrap(), (9, 29));
        let short = CapfiltOptions {
            max_length: 4,
            ..o.clone()
        };
        let err = short.new_token_limits(4).unwrap_err().to_string();
        assert!(err.contains("--max-length"), "{err}");
    }

    #[test]
    fn nucleus_and_beam_configs() {
        let o = CapfiltOptions {
            captions_per_image: 2,
            ..Default::default()
        };
        let g = o.generation_config(4, 7).unwrap();
        assert!(g.do_sample && g.top_p == 0.9 && g.top_k == 0 && g.num_beams == 1);
        assert_eq!((g.num_return_sequences, g.seed), (2, 7));
        assert_eq!(g.repetition_penalty, 1.1);
        let b = CapfiltOptions::beam(3).generation_config(4, 0).unwrap();
        assert!(!b.do_sample && b.num_beams == 3 && b.repetition_penalty == 1.0);
    }

    #[test]
    fn bad_options_name_their_flag() {
        let cases: [(CapfiltOptions, &str); 6] = [
            (
                CapfiltOptions {
                    decoding: Decoding::Nucleus { top_p: 0.0 },
                    ..Default::default()
                },
                "--top-p",
            ),
            (
                CapfiltOptions {
                    threshold: 1.5,
                    ..Default::default()
                },
                "--threshold",
            ),
            (
                CapfiltOptions {
                    threshold: f32::NAN,
                    ..Default::default()
                },
                "--threshold",
            ),
            (
                CapfiltOptions {
                    captions_per_image: 0,
                    ..Default::default()
                },
                "--captions-per-image",
            ),
            (
                CapfiltOptions {
                    captions_per_image: 4,
                    ..CapfiltOptions::beam(3)
                },
                "--captions-per-image",
            ),
            (
                CapfiltOptions {
                    min_length: 40,
                    ..Default::default()
                },
                "--min-length",
            ),
        ];
        for (o, flag) in cases {
            let err = o.validate().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
        assert!(CapfiltOptions::default().validate().is_ok());
    }
}
