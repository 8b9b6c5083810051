//! Stage 1: a planner turns a request into a [`Plan`]. Implementations: the offline
//! planner language model that Glimpse trains, and any OpenAI-compatible chat
//! endpoint prompted as HuggingGPT prompts its LLM.

use crate::plan::Plan;
use crate::tasks::Catalog;
use crate::Result;

/// What a planner is asked.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The user's request, non-empty.
    pub text: &'a str,
    /// How many images came with the request (`<image>-1` ... `<image>-N`).
    pub images: usize,
    /// The task types the plan may use.
    pub catalog: &'a Catalog,
}

/// A planner's answer: the plan and the text it was read from.
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    /// The planner's raw output, kept for reports and errors.
    pub raw: String,
}

/// Stage 1 of the agent.
pub trait Planner: Send + Sync {
    /// Names the planner for reports (a model directory, an endpoint and model id).
    fn describe(&self) -> String;

    /// Plans `request`. The plan parses; whether it validates against the catalog is
    /// checked by the caller, which reports a plan that cannot run.
    fn plan(&self, request: &PlanRequest<'_>) -> Result<Planned>;
}

/// The offline planner: the planner language model in `dir` (such as the bundled
/// `models/planner-synth`) decoding plans under the plan grammar (`local`, `grammar`).
pub fn local_planner(dir: &std::path::Path) -> Result<Box<dyn Planner>> {
    Ok(Box::new(crate::local::LocalPlanner::load(dir)?))
}
