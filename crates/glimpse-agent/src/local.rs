//! The offline planner: a small causal language model trained on the corpus
//! (`recipes/planner-synth.toml`, bundled as `models/planner-synth`) that writes the
//! canonical plan after [`prompt_of`] the request, decoded greedily under the plan
//! grammar ([`crate::grammar`]): at each step only the pieces whose characters keep the
//! text a prefix of a valid plan for this catalog and image count may follow, and the
//! end token only once the plan is whole. Every plan it returns therefore parses and
//! validates; a plan that does not finish within the token budget is an error naming
//! what was written.
//!
//! Requests are lower-cased first: the world's vocabulary, and so the corpus, is
//! lower case.

use std::path::{Path, PathBuf};

use candle_core::Device;
use glimpse_models::causal_lm::CausalLm;
use glimpse_models::checkpoint::ModelFiles;

use crate::corpus::prompt_of;
use crate::grammar::{PlanGrammar, Status};
use crate::plan::Plan;
use crate::planner::{PlanRequest, Planned, Planner};
use crate::{Error, Result};

/// Most plan tokens the planner writes (fewer where the model's `max_length` ends first).
pub const MAX_PLAN_TOKENS: usize = 320;

/// A planner language model on the CPU.
pub struct LocalPlanner {
    lm: CausalLm,
    dir: PathBuf,
    /// Each id's text; `None` for special tokens.
    pieces: Vec<Option<String>>,
    eos: u32,
}

impl LocalPlanner {
    /// Loads a planner directory (an exported `lm` run with the plan tokenizer).
    pub fn load(dir: &Path) -> Result<Self> {
        let fail = |msg: String| Error::Model {
            model: dir.display().to_string(),
            msg,
        };
        let files = ModelFiles::from_dir(dir, &dir.display().to_string())
            .map_err(|e| fail(e.to_string()))?;
        let lm = CausalLm::load(&files, &Device::Cpu).map_err(|e| fail(e.to_string()))?;
        let eos = *lm
            .eos_token_ids
            .first()
            .ok_or_else(|| fail("config.json names no eos_token_id".into()))?;
        let tok = lm.tokenizer.inner();
        let added = tok.get_added_vocabulary();
        let n = tok.get_vocab_size(true);
        let pieces = (0..n as u32)
            .map(|id| tok.id_to_token(id).filter(|t| !added.is_special_token(t)))
            .collect();
        Ok(Self {
            lm,
            dir: dir.to_path_buf(),
            pieces,
            eos,
        })
    }

    /// The plan text for `request`, token by token under the grammar.
    pub fn decode(&self, request: &PlanRequest<'_>) -> Result<String> {
        let fail = |msg: String| Error::Planner {
            planner: self.describe(),
            msg,
        };
        let grammar = PlanGrammar::new(request.catalog, request.images);
        let prompt = prompt_of(&request.text.to_lowercase(), request.images);
        let ids = self
            .lm
            .encode_prompt(&prompt)
            .map_err(|e| fail(e.to_string()))?;
        // Positions past the model's length have no trained position.
        let budget = self
            .lm
            .max_length
            .map_or(MAX_PLAN_TOKENS, |m| m.saturating_sub(ids.len()))
            .min(MAX_PLAN_TOKENS);
        let mut cache = self.lm.new_cache();
        let mut feed = ids;
        let mut text = String::new();
        for _ in 0..budget {
            let logits: Vec<f32> = self
                .lm
                .step(&feed, &mut cache)
                .and_then(|l| Ok(l.to_vec1()?))
                .map_err(|e| fail(e.to_string()))?;
            let complete = grammar.check(&text) == Status::Complete;
            let allowed = |id: u32| {
                if id == self.eos {
                    return complete;
                }
                match self.pieces.get(id as usize).and_then(|p| p.as_deref()) {
                    Some(p) if !complete => {
                        !matches!(grammar.check(&format!("{text}{p}")), Status::Invalid(_))
                    }
                    _ => false,
                }
            };
            // Best first: the first allowed token is the constrained argmax.
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
            let id = order
                .into_iter()
                .find(|&id| allowed(id))
                .ok_or_else(|| fail(format!("no token can continue {text:?}")))?;
            if id == self.eos {
                return Ok(text);
            }
            text.push_str(
                self.pieces[id as usize]
                    .as_deref()
                    .expect("allowed pieces exist"),
            );
            feed = vec![id];
        }
        Err(fail(format!(
            "the plan did not finish within {budget} tokens: {text:?}"
        )))
    }
}

impl Planner for LocalPlanner {
    fn describe(&self) -> String {
        format!("local planner {}", self.dir.display())
    }

    fn plan(&self, request: &PlanRequest<'_>) -> Result<Planned> {
        if request.text.trim().is_empty() {
            return Err(Error::Plan("the request is empty".into()));
        }
        let raw = self.decode(request)?;
        let plan = Plan::parse(&raw)?;
        Ok(Planned { plan, raw })
    }
}
