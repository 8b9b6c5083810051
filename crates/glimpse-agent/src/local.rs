//! The offline planner: a small causal language model trained on the corpus
//! (`recipes/planner-synth.toml`, bundled as `models/planner-synth`) that writes the
//! canonical plan after [`prompt_of`] the request, decoded greedily under the plan
//! grammar ([`crate::grammar`]): at each step only the pieces whose characters keep the
//! text a prefix of a valid plan for this catalog and image count may follow, and the
//! end token only once the plan is whole. Every plan it returns therefore parses and
//! validates; a plan that does not finish within the token budget is an error naming
//! what was written. The grammar copies ([`PlanGrammar::copying`]): every literal
//! argument is a span of the request's words and every dependency is used, since the
//! model can only copy slots (an object, a question, labels) from what it reads.
//!
//! Requests are lower-cased first: the world's vocabulary, and so the corpus, is
//! lower case.

use std::path::{Path, PathBuf};

use candle_core::Device;
use glimpse_models::causal_lm::CausalLm;
use glimpse_models::checkpoint::ModelFiles;

use crate::corpus::prompt_of;
use crate::grammar::{PlanGrammar, Status};
use crate::plan::{ArgValue, Plan, PlanTask, Reference};
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
        let req = request.text.trim().to_lowercase();
        let grammar = PlanGrammar::new(request.catalog, request.images).copying(&req);
        let prompt = prompt_of(&req, request.images);
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

/// `plan` without the tasks that repeat an earlier task exactly (same name, inputs
/// and dependencies): a repeat would compute the same result again. Its dependents
/// read the earlier task instead; ids are renumbered in order. A small model sometimes
/// writes a fan-out's last task twice.
pub fn without_repeats(plan: Plan) -> Plan {
    let mut kept: Vec<PlanTask> = Vec::new();
    let mut new_id: Vec<usize> = Vec::with_capacity(plan.tasks.len());
    for mut t in plan.tasks {
        t.dep = t.dep.iter().map(|d| new_id[*d]).collect();
        t.dep.dedup();
        for v in t.args.values_mut() {
            if let ArgValue::Ref(Reference::Resource(n)) = v {
                *n = new_id[*n];
            }
        }
        t.id = kept.len();
        match kept
            .iter()
            .find(|k| k.task == t.task && k.dep == t.dep && k.args == t.args)
        {
            Some(k) => new_id.push(k.id),
            None => {
                new_id.push(t.id);
                kept.push(t);
            }
        }
    }
    Plan { tasks: kept }
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
        let plan = without_repeats(Plan::parse(&raw)?);
        Ok(Planned { plan, raw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_tasks_are_dropped_and_references_follow() {
        let raw = r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":2,"task":"text-generation","dep":[1],"args":{"text":"<resource>-1"}},{"id":3,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-2"}}]}"#;
        let plan = without_repeats(Plan::parse(raw).unwrap());
        assert_eq!(
            plan.to_json(),
            r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"text-generation","dep":[0],"args":{"text":"<resource>-0"}},{"id":2,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-2"}}]}"#
        );
        plan.validate(&crate::tasks::Catalog::builtin(), Some(2))
            .unwrap();
    }
}
