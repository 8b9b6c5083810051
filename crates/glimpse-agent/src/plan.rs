//! Plans in HuggingGPT's format:
//! `{"tasks": [{"id": N, "task": NAME, "dep": [ids or -1], "args": {...}}]}`.
//!
//! An argument value is a literal text, a list of labels, or a reference:
//! `"<resource>-N"` is the result of task `N`, and `"<image>-K"` is the `K`-th image
//! of the request (counted from 1). [`Plan::parse`] reads a plan (also HuggingGPT's
//! bare list of tasks, and a plan inside surrounding prose or a code fence);
//! [`Plan::validate`] checks it against a [`Catalog`]: known task names and argument
//! names, required arguments present, dependencies and references only to earlier
//! tasks, references listed in `dep`, results of the right kind, images that exist.
//! [`Plan::to_json`] writes the canonical compact text the planner is trained on.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::tasks::{ArgName, Catalog};
use crate::{Error, Result};

/// A reference inside an argument value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reference {
    /// `<resource>-N`: the result of task `N`.
    Resource(usize),
    /// `<image>-K`: the request's `K`-th image, from 1.
    Image(usize),
}

impl Reference {
    /// Reads `<resource>-N` or `<image>-K`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let num = |rest: &str| -> Option<usize> {
            if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 6 {
                return None;
            }
            rest.parse().ok()
        };
        if let Some(rest) = s.strip_prefix("<resource>-") {
            return num(rest).map(Self::Resource);
        }
        if let Some(rest) = s.strip_prefix("<image>-") {
            return num(rest).map(Self::Image);
        }
        None
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resource(n) => write!(f, "<resource>-{n}"),
            Self::Image(k) => write!(f, "<image>-{k}"),
        }
    }
}

/// One argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A literal: a text, a question, a path or URL of an image.
    Text(String),
    /// A list of labels.
    List(Vec<String>),
    /// Another task's result or a request image.
    Ref(Reference),
}

impl ArgValue {
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(match Reference::parse(s) {
                Some(r) => Self::Ref(r),
                None => Self::Text(s.clone()),
            }),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Self::List),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.clone()),
            Self::List(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
            Self::Ref(r) => Value::String(r.to_string()),
        }
    }

    /// The value as a plan writes it, for comparing values (lists joined by ", ").
    pub fn as_plain(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::List(items) => items.join(", "),
            Self::Ref(r) => r.to_string(),
        }
    }
}

/// One task of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTask {
    pub id: usize,
    pub task: String,
    /// Ids of the tasks this one waits for; empty is HuggingGPT's `[-1]`.
    pub dep: Vec<usize>,
    pub args: BTreeMap<ArgName, ArgValue>,
}

impl PlanTask {
    /// The tasks whose results this task's arguments reference.
    pub fn resource_refs(&self) -> impl Iterator<Item = usize> + '_ {
        self.args.values().filter_map(|v| match v {
            ArgValue::Ref(Reference::Resource(n)) => Some(*n),
            _ => None,
        })
    }
}

/// A task graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub tasks: Vec<PlanTask>,
}

impl Plan {
    /// Reads a plan from a planner's text. Accepts `{"tasks": [...]}` and a bare list of
    /// tasks, alone or inside surrounding text (the first balanced JSON value that
    /// parses). Checks the shape of each task, not the catalog: see [`Plan::validate`].
    pub fn parse(text: &str) -> Result<Self> {
        let value = first_json_value(text)
            .ok_or_else(|| Error::PlanSyntax(format!("no JSON plan in {:?}", clip(text))))?;
        Self::from_json(&value)
    }

    /// Reads a plan from parsed JSON.
    pub fn from_json(value: &Value) -> Result<Self> {
        let list = match value {
            Value::Object(map) => map
                .get("tasks")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::PlanSyntax("the object has no `tasks` list".into()))?,
            Value::Array(list) => list,
            _ => return Err(Error::PlanSyntax("a plan is an object or a list".into())),
        };
        let tasks = list
            .iter()
            .enumerate()
            .map(|(i, t)| task_from_json(i, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { tasks })
    }

    /// The canonical JSON value: keys in the order `id`, `task`, `dep`, `args`.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.to_json()).expect("a canonical plan is JSON")
    }

    /// The canonical compact text, `{"tasks":[{"id":0,"task":"...","dep":[-1],"args":{...}}]}`,
    /// with arguments in the order image, text, question, labels.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"tasks\":[");
        for (i, t) in self.tasks.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let dep = if t.dep.is_empty() {
                "-1".to_string()
            } else {
                t.dep
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push_str(&format!(
                "{{\"id\":{},\"task\":{},\"dep\":[{}],\"args\":{{",
                t.id,
                Value::String(t.task.clone()),
                dep
            ));
            for (j, name) in ArgName::ALL
                .iter()
                .filter(|n| t.args.contains_key(n))
                .enumerate()
            {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{}\":{}", name, t.args[name].to_json()));
            }
            out.push_str("}}");
        }
        out.push_str("]}");
        out
    }

    pub fn get(&self, id: usize) -> Option<&PlanTask> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Checks that the plan can run with `catalog`'s task types and `images` request
    /// images (`None`: do not check image references). The first problem found is the
    /// error, naming the task and argument.
    pub fn validate(&self, catalog: &Catalog, images: Option<usize>) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(Error::Plan("the plan has no tasks".into()));
        }
        let mut seen: Vec<usize> = Vec::new();
        for t in &self.tasks {
            let fail = |msg: String| Error::PlanTask {
                id: t.id as i64,
                msg,
            };
            if seen.contains(&t.id) {
                return Err(fail("the id is used twice".into()));
            }
            let spec = catalog.get(&t.task).ok_or_else(|| {
                fail(format!(
                    "unknown task `{}` (known: {})",
                    t.task,
                    catalog.names().collect::<Vec<_>>().join(", ")
                ))
            })?;
            for d in &t.dep {
                if !seen.contains(d) {
                    return Err(fail(format!(
                        "depends on task {d}, which is not an earlier task"
                    )));
                }
            }
            for name in &spec.required {
                if !t.args.contains_key(name) {
                    return Err(fail(format!("`{}` needs the argument `{name}`", t.task)));
                }
            }
            for (name, value) in &t.args {
                if !spec.takes(*name) {
                    return Err(fail(format!("`{}` takes no argument `{name}`", t.task)));
                }
                match value {
                    ArgValue::Ref(Reference::Resource(n)) => {
                        if !t.dep.contains(n) {
                            return Err(fail(format!(
                                "argument `{name}` uses <resource>-{n} but `dep` does not list task {n}"
                            )));
                        }
                        let out = self
                            .get(*n)
                            .and_then(|d| catalog.get(&d.task))
                            .map(|s| s.output)
                            .expect("dependencies were checked above");
                        if !name.accepts(out) {
                            return Err(fail(format!(
                                "argument `{name}` cannot take the result of task {n}, which is {out:?}"
                            )));
                        }
                    }
                    ArgValue::Ref(Reference::Image(k)) => {
                        if *name != ArgName::Image {
                            return Err(fail(format!("argument `{name}` cannot be an image")));
                        }
                        if let Some(n) = images {
                            if *k == 0 || *k > n {
                                return Err(fail(format!(
                                    "argument `image` is <image>-{k}, but the request has {n} image(s)"
                                )));
                            }
                        }
                    }
                    ArgValue::Text(s) if s.trim().is_empty() => {
                        return Err(fail(format!("argument `{name}` is empty")));
                    }
                    ArgValue::List(items) if items.iter().all(|s| s.trim().is_empty()) => {
                        return Err(fail(format!("argument `{name}` is an empty list")));
                    }
                    _ => {}
                }
            }
            seen.push(t.id);
        }
        Ok(())
    }
}

fn task_from_json(index: usize, v: &Value) -> Result<PlanTask> {
    let bad = |msg: &str| Error::PlanSyntax(format!("task #{index}: {msg}"));
    let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
    let id = obj
        .get("id")
        .and_then(|i| {
            i.as_u64()
                .or_else(|| i.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| bad("`id` is not a non-negative integer"))? as usize;
    let task = obj
        .get("task")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`task` is not a string"))?
        .trim()
        .to_string();
    let dep = match obj.get("dep") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut dep = Vec::new();
            for d in items {
                match d.as_i64() {
                    Some(-1) => {}
                    Some(n) if n >= 0 => dep.push(n as usize),
                    _ => return Err(bad("`dep` holds something other than task ids and -1")),
                }
            }
            dep.sort_unstable();
            dep.dedup();
            dep
        }
        Some(_) => return Err(bad("`dep` is not a list")),
    };
    let mut args = BTreeMap::new();
    match obj.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let name = ArgName::parse(k)
                    .ok_or_else(|| bad(&format!("unknown argument name `{k}`")))?;
                let value = ArgValue::from_json(v).ok_or_else(|| {
                    bad(&format!(
                        "argument `{k}` is not a string or a list of strings"
                    ))
                })?;
                args.insert(name, value);
            }
        }
        Some(_) => return Err(bad("`args` is not an object")),
    }
    Ok(PlanTask {
        id,
        task,
        dep,
        args,
    })
}

/// The first balanced `{...}` or `[...]` in `text` that parses as JSON.
fn first_json_value(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    for (start, &b) in bytes.iter().enumerate() {
        if b != b'{' && b != b'[' {
            continue;
        }
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(v)) = stream.next() {
            if v.is_object() || v.is_array() {
                return Some(v);
            }
        }
    }
    None
}

fn clip(text: &str) -> String {
    let t: String = text.chars().take(120).collect();
    if t.len() < text.len() {
        format!("{t}...")
    } else {
        t
    }
}

#[cfg(test)]
mod tests;
