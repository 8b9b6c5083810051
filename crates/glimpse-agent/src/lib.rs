//! The planning agent, after HuggingGPT (Shen et al., 2023): a language model plans a
//! request into a graph of tasks, a model is selected for each task, the graph runs
//! with results flowing through references, and the answer is written from the
//! results.
//!
//! This crate holds the plan and its validation (`plan`) and the catalog of task
//! types with their arguments, outputs and descriptions (`tasks`), and
//! the planner interface (`planner`).

pub mod corpus;
pub mod error;
pub mod grammar;
pub mod local;
pub mod plan;
pub mod plan_eval;
pub mod plan_tokenizer;
pub mod planner;
pub mod taskbench;
pub mod tasks;

pub use error::{Error, Result};
pub use plan::{ArgValue, Plan, PlanTask, Reference};
pub use planner::{PlanRequest, Planned, Planner};
pub use tasks::{ArgName, Catalog, OutputKind, TaskSpec};
