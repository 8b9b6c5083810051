//! Stage 3: runs a validated plan. Tasks whose dependencies are done run together on
//! scoped threads (a wave at a time), the others after them; references are resolved
//! into the values they stand for (`<image>-K` the request's K-th image,
//! `<resource>-N` task N's result); an `image` argument that resolves to several
//! images (a retrieval's results) runs the task once per image. A task that fails
//! is reported with its error, and every task that depends on it, directly or not,
//! is skipped with that reason: nothing is dropped silently.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::plan::{ArgValue, Plan, PlanTask, Reference};
use crate::select::Choice;
use crate::tasks::ArgName;
use crate::{Error, Result};

/// A label with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub label: String,
    pub score: f32,
}

/// A retrieved image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    pub key: String,
    pub path: String,
    pub score: f32,
    #[serde(default)]
    pub text: Option<String>,
}

/// What one run of a task produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Output {
    Text {
        text: String,
    },
    /// Best first.
    Labels {
        labels: Vec<Scored>,
    },
    Score {
        score: f32,
    },
    Images {
        images: Vec<Retrieved>,
    },
    Image {
        path: String,
    },
}

/// An image a task runs on: how the answer names it, and where it is (a file, or a
/// WebDataset entry `SHARD.tar#NAME`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRef {
    /// `image 2` for the request's second image, `image 000123` for a retrieved one.
    pub label: String,
    pub path: String,
}

/// A task's resolved arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Input {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

impl Input {
    /// The arguments as a tool receives them.
    pub fn to_args(&self) -> BTreeMap<ArgName, serde_json::Value> {
        let mut args = BTreeMap::new();
        if let Some(i) = &self.image {
            args.insert(ArgName::Image, i.path.clone().into());
        }
        if let Some(t) = &self.text {
            args.insert(ArgName::Text, t.clone().into());
        }
        if let Some(q) = &self.question {
            args.insert(ArgName::Question, q.clone().into());
        }
        if let Some(l) = &self.labels {
            args.insert(ArgName::Labels, l.clone().into());
        }
        args
    }
}

/// One run of a task: its input and output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub input: Input,
    pub output: Output,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TaskState {
    /// One item, or one per image of a fanned-out task.
    Done {
        items: Vec<Item>,
    },
    Failed {
        error: String,
    },
    Skipped {
        reason: String,
    },
}

/// A task's outcome for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    pub id: usize,
    pub task: String,
    /// The model, index or tool that ran it.
    pub model: String,
    #[serde(flatten)]
    pub state: TaskState,
    pub seconds: f64,
}

impl TaskReport {
    pub fn items(&self) -> &[Item] {
        match &self.state {
            TaskState::Done { items } => items,
            _ => &[],
        }
    }
}

/// Runs one task type on resolved arguments (a model, an index, a tool).
pub trait Backend: Send + Sync {
    fn run(&self, task: &str, input: &Input) -> Result<Output>;
}

/// Gives the backend of a registry entry (loading it on first use).
pub trait Backends: Sync {
    fn backend(&self, entry_id: &str) -> Result<std::sync::Arc<dyn Backend>>;
}

/// Runs `plan` (validated) with the model `choices` made for each task, over the
/// request's `images` (paths, `<image>-1` first).
pub fn execute(
    plan: &Plan,
    choices: &[Choice],
    images: &[String],
    backends: &dyn Backends,
) -> Vec<TaskReport> {
    let mut done: BTreeMap<usize, TaskReport> = BTreeMap::new();
    loop {
        let ready: Vec<&PlanTask> = plan
            .tasks
            .iter()
            .filter(|t| !done.contains_key(&t.id) && t.dep.iter().all(|d| done.contains_key(d)))
            .collect();
        if ready.is_empty() {
            break;
        }
        let model_of = |id: usize| {
            choices
                .iter()
                .find(|c| c.task == id)
                .map(|c| c.model.clone())
                .unwrap_or_default()
        };
        let mut runnable = Vec::new();
        for t in ready {
            let blocked = t.dep.iter().find_map(|d| match &done[d].state {
                TaskState::Failed { .. } => Some(format!("task {d} failed")),
                TaskState::Skipped { .. } => Some(format!("task {d} was skipped")),
                TaskState::Done { .. } => None,
            });
            match blocked {
                Some(reason) => {
                    done.insert(
                        t.id,
                        TaskReport {
                            id: t.id,
                            task: t.task.clone(),
                            model: model_of(t.id),
                            state: TaskState::Skipped { reason },
                            seconds: 0.0,
                        },
                    );
                }
                None => runnable.push(t),
            }
        }
        let finished: Vec<TaskReport> = std::thread::scope(|scope| {
            let handles: Vec<_> = runnable
                .iter()
                .map(|t| {
                    let done = &done;
                    let model = model_of(t.id);
                    scope.spawn(move || {
                        let started = Instant::now();
                        let state = match run_task(t, &model, done, images, backends) {
                            Ok(items) => TaskState::Done { items },
                            Err(e) => TaskState::Failed {
                                error: e.to_string(),
                            },
                        };
                        TaskReport {
                            id: t.id,
                            task: t.task.clone(),
                            model,
                            state,
                            seconds: started.elapsed().as_secs_f64(),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&runnable)
                .map(|(h, t)| {
                    h.join().unwrap_or_else(|_| TaskReport {
                        id: t.id,
                        task: t.task.clone(),
                        model: model_of(t.id),
                        state: TaskState::Failed {
                            error: "the task panicked".into(),
                        },
                        seconds: 0.0,
                    })
                })
                .collect()
        });
        for r in finished {
            done.insert(r.id, r);
        }
    }
    plan.tasks
        .iter()
        .filter_map(|t| done.remove(&t.id))
        .collect()
}

fn run_task(
    t: &PlanTask,
    model: &str,
    done: &BTreeMap<usize, TaskReport>,
    images: &[String],
    backends: &dyn Backends,
) -> Result<Vec<Item>> {
    if model.is_empty() {
        return Err(Error::NoModel {
            task: t.task.clone(),
            hint: "no model was selected".into(),
        });
    }
    let backend = backends.backend(model)?;
    let inputs = resolve(t, done, images)?;
    inputs
        .into_iter()
        .map(|input| {
            let output = backend
                .run(&t.task, &input)
                .map_err(|e| match &input.image {
                    Some(_) if matches!(e, Error::Image { .. }) => e,
                    Some(img) => Error::Model {
                        model: model.to_string(),
                        msg: format!("on {} ({}): {e}", img.label, img.path),
                    },
                    None => e,
                })?;
            Ok(Item { input, output })
        })
        .collect()
}

/// The inputs of `t`: one, or one per image when its `image` argument resolves to
/// several.
fn resolve(
    t: &PlanTask,
    done: &BTreeMap<usize, TaskReport>,
    images: &[String],
) -> Result<Vec<Input>> {
    let fail = |msg: String| Error::PlanTask {
        id: t.id as i64,
        msg,
    };
    let outputs = |n: &usize| -> Result<Vec<&Output>> {
        let r = done
            .get(n)
            .ok_or_else(|| fail(format!("<resource>-{n} is not a finished task")))?;
        Ok(r.items().iter().map(|i| &i.output).collect())
    };
    let texts = |v: &ArgValue| -> Result<Vec<String>> {
        match v {
            ArgValue::Text(s) => Ok(vec![s.clone()]),
            ArgValue::List(items) => Ok(vec![items.join(", ")]),
            ArgValue::Ref(Reference::Resource(n)) => outputs(n)?
                .into_iter()
                .map(|o| match o {
                    Output::Text { text } => Ok(text.clone()),
                    Output::Labels { labels } => labels
                        .first()
                        .map(|l| l.label.clone())
                        .ok_or_else(|| fail(format!("task {n} returned no label"))),
                    other => Err(fail(format!("task {n}'s result is not a text: {other:?}"))),
                })
                .collect(),
            ArgValue::Ref(Reference::Image(k)) => Err(fail(format!("<image>-{k} is not a text"))),
        }
    };
    let mut base = Input::default();
    let mut fan: Vec<ImageRef> = Vec::new();
    for (name, value) in &t.args {
        match name {
            ArgName::Image => {
                fan = match value {
                    ArgValue::Ref(Reference::Image(k)) => {
                        let path = images.get(k.wrapping_sub(1)).ok_or_else(|| {
                            fail(format!(
                                "<image>-{k}, but the request has {} image(s)",
                                images.len()
                            ))
                        })?;
                        vec![ImageRef {
                            label: format!("image {k}"),
                            path: path.clone(),
                        }]
                    }
                    ArgValue::Text(path) => vec![ImageRef {
                        label: std::path::Path::new(path)
                            .file_name()
                            .map(|f| f.to_string_lossy().to_string())
                            .unwrap_or_else(|| path.clone()),
                        path: path.clone(),
                    }],
                    ArgValue::Ref(Reference::Resource(n)) => {
                        let mut out = Vec::new();
                        for o in outputs(n)? {
                            match o {
                                Output::Images { images } => {
                                    out.extend(images.iter().map(|r| ImageRef {
                                        label: format!("image {}", r.key),
                                        path: r.path.clone(),
                                    }))
                                }
                                Output::Image { path } => out.push(ImageRef {
                                    label: format!("the image of task {n}"),
                                    path: path.clone(),
                                }),
                                other => {
                                    return Err(fail(format!(
                                        "task {n}'s result is not an image: {other:?}"
                                    )))
                                }
                            }
                        }
                        if out.is_empty() {
                            return Err(fail(format!("task {n} returned no image")));
                        }
                        out
                    }
                    ArgValue::List(_) => return Err(fail("`image` is a list".into())),
                };
            }
            ArgName::Text => base.text = Some(texts(value)?.join("; ")),
            ArgName::Question => base.question = Some(texts(value)?.join("; ")),
            ArgName::Labels => {
                let labels: Vec<String> = match value {
                    ArgValue::List(items) => items.clone(),
                    ArgValue::Ref(Reference::Resource(n)) => {
                        let mut labels = Vec::new();
                        for o in outputs(n)? {
                            match o {
                                Output::Labels { labels: l } => {
                                    labels.extend(l.iter().map(|s| s.label.clone()))
                                }
                                Output::Text { text } => labels.extend(split_labels(text)),
                                other => {
                                    return Err(fail(format!(
                                        "task {n}'s result are not labels: {other:?}"
                                    )))
                                }
                            }
                        }
                        labels
                    }
                    other => split_labels(&other.as_plain()),
                };
                let labels: Vec<String> = labels
                    .into_iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                if labels.is_empty() {
                    return Err(fail("`labels` resolves to no label".into()));
                }
                base.labels = Some(labels);
            }
        }
    }
    if fan.is_empty() {
        return Ok(vec![base]);
    }
    Ok(fan
        .into_iter()
        .map(|image| Input {
            image: Some(image),
            ..base.clone()
        })
        .collect())
}

fn split_labels(text: &str) -> Vec<String> {
    text.split([',', ';', '\n'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
#[path = "execute_tests.rs"]
mod tests;
