//! The four stages end to end: plan (a [`Planner`], or a given plan), select (a model
//! per task, [`crate::select`]), execute ([`crate::execute`]) and answer
//! ([`crate::answer`]), with a [`Report`] of each stage that `glimpse agent --json`
//! prints as it is.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backends::{load_image, Loader, RunOptions};
use crate::execute::{execute, TaskReport};
use crate::plan::Plan;
use crate::planner::{PlanRequest, Planned, Planner};
use crate::registry::{Origin, Registry};
use crate::select::{select, Choice, Chooser};
use crate::tasks::Catalog;
use crate::tools::read_registry;
use crate::{Error, Result};

/// What the agent may use.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// `--model`: directories or hub ids, preferred over the bundled models.
    pub models: Vec<String>,
    /// Where `models/` lies (the bundled models); `None` offers none.
    pub bundled_root: Option<PathBuf>,
    /// `--index`: an embedding index for retrieval.
    pub index: Option<PathBuf>,
    /// `--registry`: external tools.
    pub registry_file: Option<PathBuf>,
    pub run: RunOptions,
}

/// Everything the agent did for one request.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub request: String,
    pub images: Vec<String>,
    /// Who planned: the planner's description, or "given" for a plan passed in.
    pub planner: String,
    /// The plan in HuggingGPT's format.
    pub plan: serde_json::Value,
    /// The planner's own text the plan was read from.
    pub planner_output: String,
    /// The model per task, with the reason.
    pub selections: Vec<Choice>,
    /// Each task's result, error or reason for skipping, in plan order.
    pub results: Vec<TaskReport>,
    pub answer: String,
    pub seconds: f64,
}

/// The agent: its catalog of task types, the models and tools it may use, its planner
/// and its chooser.
pub struct Agent {
    pub catalog: Catalog,
    loader: Loader,
    planner: Option<Box<dyn Planner>>,
    chooser: Box<dyn Chooser>,
}

impl Agent {
    /// Describes the models, index and tools of `cfg` (loading no weights) and joins
    /// the tools' task types to the catalog.
    pub fn new(
        cfg: AgentConfig,
        planner: Option<Box<dyn Planner>>,
        chooser: Box<dyn Chooser>,
    ) -> Result<Self> {
        let mut registry = Registry::default();
        for m in &cfg.models {
            registry.add_model(m, Origin::Loaded)?;
        }
        if let Some(idx) = &cfg.index {
            registry.add_index(idx)?;
        }
        let mut catalog = Catalog::builtin();
        if let Some(path) = &cfg.registry_file {
            for tool in read_registry(path)? {
                match catalog.get(&tool.task) {
                    None => catalog.add(tool.task_spec())?,
                    Some(spec) => {
                        if let Some(a) = spec.required.iter().find(|a| !tool.inputs.contains(a)) {
                            return Err(Error::Registry {
                                path: path.display().to_string(),
                                msg: format!(
                                    "tool `{}` performs `{}`, which needs `{a}`, but its inputs omit it",
                                    tool.id, tool.task
                                ),
                            });
                        }
                        if spec.output != tool.output {
                            return Err(Error::Registry {
                                path: path.display().to_string(),
                                msg: format!(
                                    "tool `{}` performs `{}`, whose output is {:?}, but declares {:?}",
                                    tool.id, tool.task, spec.output, tool.output
                                ),
                            });
                        }
                    }
                }
                registry.add_tool(tool)?;
            }
        }
        if let Some(root) = &cfg.bundled_root {
            registry.add_bundled(root)?;
        }
        Ok(Self {
            catalog,
            loader: Loader::new(registry, cfg.run),
            planner,
            chooser,
        })
    }

    pub fn registry(&self) -> &Registry {
        self.loader.registry()
    }

    /// The planner's description, or why there is none.
    pub fn planner_name(&self) -> String {
        self.planner
            .as_ref()
            .map_or_else(|| "none".into(), |p| p.describe())
    }

    /// Checks the request: a non-empty text and images that can be read.
    pub fn check_request(&self, request: &str, images: &[PathBuf]) -> Result<Vec<String>> {
        if request.trim().is_empty() {
            return Err(Error::Request("the request is empty".into()));
        }
        images
            .iter()
            .map(|p| {
                let s = p.display().to_string();
                load_image(&s)?;
                Ok(s)
            })
            .collect()
    }

    /// Stage 1: the planner's plan, validated against the catalog and the images.
    pub fn plan(&self, request: &str, images: &[PathBuf]) -> Result<Planned> {
        self.check_request(request, images)?;
        let planner = self.planner.as_ref().ok_or_else(|| Error::Planner {
            planner: "none".into(),
            msg: "no planner: give --planner URL (an OpenAI-compatible endpoint)".into(),
        })?;
        let planned = planner.plan(&PlanRequest {
            text: request,
            images: images.len(),
            catalog: &self.catalog,
        })?;
        planned
            .plan
            .validate(&self.catalog, Some(images.len()))
            .map_err(|e| Error::Unrunnable {
                planner: planner.describe(),
                raw: planned.raw.clone(),
                source: Box::new(e),
            })?;
        Ok(planned)
    }

    /// All four stages.
    pub fn run(&self, request: &str, images: &[PathBuf]) -> Result<Report> {
        let started = Instant::now();
        let planned = self.plan(request, images)?;
        self.finish(request, images, planned, self.planner_name(), started)
    }

    /// Stages 2 to 4 on a given plan (a gold plan of an evaluation set).
    pub fn run_plan(&self, request: &str, images: &[PathBuf], plan: Plan) -> Result<Report> {
        let started = Instant::now();
        self.check_request(request, images)?;
        plan.validate(&self.catalog, Some(images.len()))?;
        let raw = plan.to_json();
        self.finish(
            request,
            images,
            Planned { plan, raw },
            "given".into(),
            started,
        )
    }

    fn finish(
        &self,
        request: &str,
        images: &[PathBuf],
        planned: Planned,
        planner: String,
        started: Instant,
    ) -> Result<Report> {
        let images: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        let selections = select(
            &planned.plan,
            self.registry(),
            self.chooser.as_ref(),
            request,
        )?;
        let results = execute(&planned.plan, &selections, &images, &self.loader);
        let answer = crate::answer::write_answer(&results);
        Ok(Report {
            request: request.to_string(),
            images,
            planner,
            plan: planned.plan.to_value(),
            planner_output: planned.raw,
            selections,
            results,
            answer,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The repository root that holds `models/`: the current directory, else the source
/// tree this crate was built from.
pub fn default_bundled_root() -> Option<PathBuf> {
    let here = Path::new(".");
    if here.join("models").is_dir() {
        return Some(here.to_path_buf());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    built.join("models").is_dir().then_some(built)
}
