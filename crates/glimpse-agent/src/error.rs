/// Errors of the agent; each names the task, argument or reference at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Text that is not a plan in HuggingGPT's format.
    #[error("the plan is not valid JSON in HuggingGPT's format: {0}")]
    PlanSyntax(String),
    /// A plan that parses but cannot run: unknown task, bad dependency or argument.
    #[error("task {id}: {msg}")]
    PlanTask { id: i64, msg: String },
    /// A plan with no tasks, or one that is wrong as a whole.
    #[error("plan: {0}")]
    Plan(String),
    /// A planner that failed: an endpoint down or timing out, garbage in its reply.
    #[error("planner {planner}: {msg}")]
    Planner { planner: String, msg: String },
    /// A corpus, tokenizer or data file that cannot be read or written.
    #[error("{0}")]
    Io(String),
    /// A planner model that fails to load or run.
    #[error("planner model {model}: {msg}")]
    Model { model: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
