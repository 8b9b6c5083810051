/// Errors of the agent; each names the task, argument, file, model or endpoint at fault.
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
    /// A plan from a planner that parses but cannot run, kept with the planner's text.
    #[error("the plan from {planner} cannot run: {source}\nthe planner wrote: {raw}")]
    Unrunnable {
        planner: String,
        raw: String,
        #[source]
        source: Box<Error>,
    },
    /// No model, index or tool can do a task type.
    #[error("no available model for `{task}`: {hint}")]
    NoModel { task: String, hint: String },
    /// A registry file that cannot be read or declares something wrong.
    #[error("registry {path}: {msg}")]
    Registry { path: String, msg: String },
    /// A model directory or index that cannot be described or loaded.
    #[error("model {model}: {msg}")]
    Model { model: String, msg: String },
    /// An external tool that failed, timed out or answered garbage.
    #[error("tool `{tool}`: {msg}")]
    Tool { tool: String, msg: String },
    /// An image of the request (or a retrieved one) that cannot be read.
    #[error("image {path}: {msg}")]
    Image { path: String, msg: String },
    /// A request that cannot be planned (empty text).
    #[error("request: {0}")]
    Request(String),
    /// An evaluation set that cannot be read.
    #[error("evaluation data {path}: {msg}")]
    Data { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
