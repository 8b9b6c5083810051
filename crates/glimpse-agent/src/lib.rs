//! The planning agent, after HuggingGPT (Shen et al., 2023): a language model plans a
//! request into a graph of tasks, a model is selected for each task, the graph runs
//! with results flowing through references, and the answer is written from the
//! results.
//!
//! - `plan`, `tasks`: plans in HuggingGPT's format and their validation against a
//!   catalog of task types.
//! - `planner` (the interface), `local` (the trained planner decoding under the plan
//!   `grammar`, over the lossless `plan_tokenizer`), `remote` (any OpenAI-compatible
//!   chat endpoint).
//! - `corpus`: the planner's requests and plans and the end-to-end set; `taskbench`,
//!   `plan_eval`: TaskBench's metrics and the planner's evaluation.
//! - `registry`: the loaded and bundled models, an index and external tools
//!   (`tools`), with descriptions and capability tags.
//! - `select`: a model per task (only candidate, a [`Chooser`], or a clear error).
//! - `execute`, `backends`: the graph run concurrently over Glimpse's models, the
//!   index and tools; `calibrate`: one match probability that ranks and decides.
//! - `answer`: the response written from the results, placeholders never left in.
//! - `agent`: the four stages with their report; `eval`: the end-to-end evaluation.

pub mod agent;
pub mod answer;
pub mod backends;
pub mod calibrate;
pub mod corpus;
pub mod error;
pub mod eval;
pub mod execute;
pub mod grammar;
pub mod local;
pub mod plan;
pub mod plan_eval;
pub mod plan_tokenizer;
pub mod planner;
pub mod registry;
pub mod remote;
pub mod select;
pub mod taskbench;
pub mod tasks;
pub mod tools;

pub use agent::{Agent, AgentConfig, Report};
pub use error::{Error, Result};
pub use plan::{ArgValue, Plan, PlanTask, Reference};
pub use planner::{PlanRequest, Planned, Planner};
pub use select::{Choice, Chooser, RuleChooser};
pub use tasks::{ArgName, Catalog, OutputKind, TaskSpec};
