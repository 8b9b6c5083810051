//! Decoding settings, with the reference's defaults and the checks that turn a bad
//! setting into an error naming the field instead of a silent odd result.

use serde::{Deserialize, Serialize};

use crate::error::{GenerateError, Result};

/// When beam search may stop before `max_new_tokens`, as the reference's
/// `early_stopping` (`false`, `true` or `"never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `false`: stop a batch row once the best running beam, scored as if it ended
    /// at the current length, cannot beat the worst of `num_beams` finished ones.
    #[default]
    Heuristic,
    /// `true`: stop a batch row as soon as `num_beams` hypotheses have finished.
    WhenFull,
    /// `"never"`: like `Heuristic`, but with a positive length penalty the running
    /// beam is scored at `max_new_tokens`, the most optimistic length (the canonical
    /// beam search when combined with `length_penalty = 0`).
    Never,
}

/// Accepts the reference's spellings: a JSON bool or the string `"never"`.
impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(Self::Heuristic),
            Raw::Bool(true) => Ok(Self::WhenFull),
            Raw::Text(s) if s == "never" => Ok(Self::Never),
            Raw::Text(s) => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", got {s:?}"
            ))),
        }
    }
}

impl Serialize for EarlyStopping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Heuristic => s.serialize_bool(false),
            Self::WhenFull => s.serialize_bool(true),
            Self::Never => s.serialize_str("never"),
        }
    }
}

/// How to choose tokens. Field meanings follow the reference's `GenerationConfig`,
/// except that lengths count new tokens only (`max_new_tokens`, `min_new_tokens`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens per row (the prompt is not counted).
    pub max_new_tokens: usize,
    /// Eos is suppressed (score -inf) while fewer tokens than this were generated.
    pub min_new_tokens: usize,
    /// 1: greedy or sampling; more: beam search (beam sampling with `do_sample`).
    pub num_beams: usize,
    /// Finished beams are ranked by `sum_logprob / generated_len^length_penalty`.
    pub length_penalty: f32,
    /// Beam search stopping rule.
    pub early_stopping: EarlyStopping,
    /// Sample from the processed distribution instead of taking the best token.
    pub do_sample: bool,
    /// Divides the scores before sampling; only used with `do_sample`.
    pub temperature: f32,
    /// Keep the `top_k` best tokens before sampling (0: no limit); only with `do_sample`.
    pub top_k: usize,
    /// Keep the smallest set of best tokens whose probability reaches `top_p`;
    /// only with `do_sample`. Must lie in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Scores of tokens already in the sequence (prompt included) are divided by it
    /// when positive, multiplied when negative. 1 disables it.
    pub repetition_penalty: f32,
    /// No `n`-gram of this size occurs twice in a sequence (prompt included): a token
    /// that would repeat one is banned. 0 disables it (the reference's default).
    pub no_repeat_ngram_size: usize,
    /// The reference's `exponential_decay_length_penalty` (start, factor): past
    /// `start` generated tokens the end tokens' scores grow by `factor` per token
    /// (see [`crate::processors::length_decay`]). `None`: off.
    pub length_decay: Option<(usize, f32)>,
    /// Seed of the sampling RNG; see [`crate::generate`] for what it determines.
    pub seed: u64,
    /// A row ends when it produces any of these. Empty: rows run to `max_new_tokens`.
    pub eos_token_ids: Vec<u32>,
    /// Written after a row's end where a rectangular batch is needed
    /// ([`crate::pad_batch`]); the ids that [`crate::generate`] returns carry no padding.
    pub pad_token_id: u32,
    /// Sequences returned per prompt row: the best ones for beam search (at most
    /// `num_beams`), independent samples with `do_sample`; 1 otherwise.
    pub num_return_sequences: usize,
}

impl Default for GenerationConfig {
    /// The reference's defaults, except `max_new_tokens = 20` where the reference
    /// limits the total length to 20 (prompt included).
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            length_decay: None,
            seed: 0,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            num_return_sequences: 1,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding with the given length limit and end tokens.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            eos_token_ids,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(GenerateError::config(
                "max_new_tokens",
                "must be at least 1",
            ));
        }
        if self.num_beams == 0 {
            return Err(GenerateError::config("num_beams", "must be at least 1"));
        }
        if !self.length_penalty.is_finite() {
            return Err(GenerateError::config(
                "length_penalty",
                format!("must be finite, got {}", self.length_penalty),
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(GenerateError::config(
                "repetition_penalty",
                format!("must be a positive number, got {}", self.repetition_penalty),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenerateError::config(
                "top_p",
                format!("must lie in (0, 1], got {}", self.top_p),
            ));
        }
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(GenerateError::config(
                "temperature",
                format!(
                    "must be a positive number when sampling, got {} (use do_sample = false for greedy)",
                    self.temperature
                ),
            ));
        }
        if self.num_return_sequences == 0 {
            return Err(GenerateError::config(
                "num_return_sequences",
                "must be at least 1",
            ));
        }
        if self.num_return_sequences > 1 {
            if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
                return Err(GenerateError::config(
                    "num_return_sequences",
                    format!(
                        "must not exceed num_beams ({}), got {}",
                        self.num_beams, self.num_return_sequences
                    ),
                ));
            }
            if self.num_beams == 1 && !self.do_sample {
                return Err(GenerateError::config(
                    "num_return_sequences",
                    "greedy decoding yields one sequence per prompt; use beams or sampling",
                ));
            }
        }
        Ok(())
    }
}

/// The decoding settings a model directory recommends in its `generation_config.json`
/// (as the reference's `GenerationConfig.from_pretrained` reads them) that change what
/// is generated: a repetition penalty and `no_repeat_ngram_size`. They apply where the
/// caller left the setting neutral (1 and 0), as the reference lets `generate`'s
/// arguments win over the file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelDecoding {
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
    /// `exponential_decay_length_penalty`: `[start, factor]`.
    pub length_decay: Option<(usize, f32)>,
}

impl ModelDecoding {
    /// Reads the two keys from a parsed `generation_config.json`; other keys are
    /// ignored, and a key of the wrong type is an error naming it.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let rp = match v.get("repetition_penalty") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(x.as_f64().ok_or_else(|| {
                GenerateError::config("repetition_penalty", format!("must be a number, got {x}"))
            })? as f32),
        };
        let ngram = match v.get("no_repeat_ngram_size") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(x.as_u64().ok_or_else(|| {
                GenerateError::config(
                    "no_repeat_ngram_size",
                    format!("must be a non-negative integer, got {x}"),
                )
            })? as usize),
        };
        let decay = match v.get("exponential_decay_length_penalty") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => {
                let pair = x.as_array().filter(|a| a.len() == 2);
                let start = pair.and_then(|a| a[0].as_u64());
                let factor = pair.and_then(|a| a[1].as_f64());
                match (start, factor) {
                    (Some(s), Some(f)) if f.is_finite() && f >= 1.0 => Some((s as usize, f as f32)),
                    _ => {
                        return Err(GenerateError::config(
                            "exponential_decay_length_penalty",
                            format!("must be [start, factor] with factor >= 1, got {x}"),
                        ))
                    }
                }
            }
        };
        let out = Self {
            repetition_penalty: rp,
            no_repeat_ngram_size: ngram,
            length_decay: decay,
        };
        out.apply(GenerationConfig::default()).validate()?;
        Ok(out)
    }

    /// `gen` with the recommended settings where it leaves them neutral.
    pub fn apply(&self, mut gen: GenerationConfig) -> GenerationConfig {
        if let Some(rp) = self.repetition_penalty {
            if gen.repetition_penalty == 1.0 {
                gen.repetition_penalty = rp;
            }
        }
        if let Some(n) = self.no_repeat_ngram_size {
            if gen.no_repeat_ngram_size == 0 {
                gen.no_repeat_ngram_size = n;
            }
        }
        if gen.length_decay.is_none() {
            gen.length_decay = self.length_decay;
        }
        gen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(cfg: GenerationConfig) -> &'static str {
        match cfg.validate() {
            Err(GenerateError::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_reference() {
        let cfg = GenerationConfig::default();
        cfg.validate().unwrap();
        assert_eq!(
            (cfg.num_beams, cfg.top_k, cfg.top_p, cfg.temperature),
            (1, 50, 1.0, 1.0)
        );
        assert_eq!(cfg.early_stopping, EarlyStopping::Heuristic);
    }

    #[test]
    fn bad_fields_are_named() {
        let d = GenerationConfig::default;
        assert_eq!(field_of(GenerationConfig { top_p: 0.0, ..d() }), "top_p");
        assert_eq!(field_of(GenerationConfig { top_p: 1.5, ..d() }), "top_p");
        assert_eq!(
            field_of(GenerationConfig {
                top_p: f32::NAN,
                ..d()
            }),
            "top_p"
        );
        assert_eq!(
            field_of(GenerationConfig {
                num_beams: 0,
                ..d()
            }),
            "num_beams"
        );
        assert_eq!(
            field_of(GenerationConfig {
                max_new_tokens: 0,
                ..d()
            }),
            "max_new_tokens"
        );
        let hot = GenerationConfig {
            do_sample: true,
            temperature: 0.0,
            ..d()
        };
        assert_eq!(field_of(hot), "temperature");
        let neg = GenerationConfig {
            do_sample: true,
            temperature: -1.0,
            ..d()
        };
        assert_eq!(field_of(neg), "temperature");
        let rep = GenerationConfig {
            repetition_penalty: 0.0,
            ..d()
        };
        assert_eq!(field_of(rep), "repetition_penalty");
        let many = GenerationConfig {
            num_beams: 2,
            num_return_sequences: 3,
            ..d()
        };
        assert_eq!(field_of(many), "num_return_sequences");
        let greedy_many = GenerationConfig {
            num_return_sequences: 2,
            ..d()
        };
        assert_eq!(field_of(greedy_many), "num_return_sequences");
        // Temperature is ignored without sampling, as in the reference.
        GenerationConfig {
            temperature: 0.0,
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn early_stopping_reads_reference_spellings() {
        let parse = |s: &str| serde_json::from_str::<EarlyStopping>(s);
        assert_eq!(parse("false").unwrap(), EarlyStopping::Heuristic);
        assert_eq!(parse("true").unwrap(), EarlyStopping::WhenFull);
        assert_eq!(parse("\"never\"").unwrap(), EarlyStopping::Never);
        assert!(parse("\"sometimes\"").is_err());
        let cfg: GenerationConfig =
            serde_json::from_str(r#"{"num_beams": 3, "early_stopping": "never"}"#).unwrap();
        assert_eq!(
            (cfg.num_beams, cfg.early_stopping),
            (3, EarlyStopping::Never)
        );
    }

    #[test]
    fn model_decoding_fills_only_neutral_settings() {
        let m = ModelDecoding::from_json(&serde_json::json!({
            "bos_token_id": 5, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3
        }))
        .unwrap();
        let g = m.apply(GenerationConfig::default());
        assert_eq!((g.repetition_penalty, g.no_repeat_ngram_size), (1.3, 3));
        let chosen = GenerationConfig {
            repetition_penalty: 1.1,
            no_repeat_ngram_size: 2,
            ..GenerationConfig::default()
        };
        let g = m.apply(chosen);
        assert_eq!((g.repetition_penalty, g.no_repeat_ngram_size), (1.1, 2));
        assert_eq!(
            ModelDecoding::from_json(&serde_json::json!({"max_length": 20})).unwrap(),
            ModelDecoding::default()
        );
        for (bad, field) in [
            (
                serde_json::json!({"no_repeat_ngram_size": -1}),
                "no_repeat_ngram_size",
            ),
            (
                serde_json::json!({"no_repeat_ngram_size": "3"}),
                "no_repeat_ngram_size",
            ),
            (
                serde_json::json!({"repetition_penalty": 0.0}),
                "repetition_penalty",
            ),
        ] {
            let e = ModelDecoding::from_json(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
