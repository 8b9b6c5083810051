//! A [`Planner`] and [`Chooser`] over any OpenAI-compatible chat endpoint
//! (`glimpse serve`, vLLM, llama.cpp, a hosted API): HuggingGPT's task-planning
//! prompt (the catalog's task types with their arguments and descriptions, the
//! reference conventions, demonstrations) and its model-selection prompt (the
//! candidates with their descriptions; the reply names one and says why).
//!
//! Every call has a timeout. A down endpoint, a status other than 200, a reply that
//! is not a chat completion and a completion that holds no plan are each an error
//! that names the endpoint.

use std::time::Duration;

use serde_json::{json, Value};

use crate::plan::{Plan, PlanTask};
use crate::planner::{PlanRequest, Planned, Planner};
use crate::registry::Entry;
use crate::select::{Chooser, RuleChooser};
use crate::tasks::Catalog;
use crate::{Error, Result};

/// An OpenAI-compatible chat endpoint used as planner.
#[derive(Debug, Clone)]
pub struct RemotePlanner {
    /// `http://host:port/v1`, or the full `.../chat/completions` URL.
    pub base: String,
    /// The `model` field of requests.
    pub model: String,
    pub timeout: Duration,
    /// `Authorization: Bearer KEY`, when the endpoint wants one.
    pub api_key: Option<String>,
}

impl RemotePlanner {
    pub fn new(base: &str, model: &str, timeout: Duration) -> Result<Self> {
        let p = Self {
            base: base.trim_end_matches('/').to_string(),
            model: model.to_string(),
            timeout,
            api_key: None,
        };
        if !(p.base.starts_with("http://") || p.base.starts_with("https://")) {
            return Err(p.fail(format!("{base:?} is not an http(s) URL")));
        }
        if model.trim().is_empty() {
            return Err(p.fail("no model id (--planner-model)".into()));
        }
        Ok(p)
    }

    fn url(&self) -> String {
        if self.base.ends_with("/chat/completions") {
            self.base.clone()
        } else {
            format!("{}/chat/completions", self.base)
        }
    }

    fn fail(&self, msg: String) -> Error {
        Error::Planner {
            planner: self.describe(),
            msg,
        }
    }

    /// One chat completion: the assistant's text.
    pub fn complete(&self, messages: Vec<Value>) -> Result<String> {
        let url = self.url();
        let body = json!({
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": 512,
            "stream": false,
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(k) = &self.api_key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.send(body.to_string()).map_err(|e| {
            self.fail(match e {
                ureq::Error::Timeout(_) => {
                    format!("no answer within {:.0} s", self.timeout.as_secs_f64())
                }
                ureq::Error::Io(e) => format!("cannot reach {url}: {e}"),
                ureq::Error::ConnectionFailed => format!("cannot reach {url}: connection failed"),
                other => format!("POST {url}: {other}"),
            })
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.fail(format!("reading the reply of {url}: {e}")))?;
        if status != 200 {
            return Err(self.fail(format!("{url} answered {status}: {}", clip(&text))));
        }
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            self.fail(format!(
                "the reply is not an OpenAI chat completion: {}",
                clip(&text)
            ))
        })?;
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                self.fail(format!(
                    "the reply has no choices[0].message.content: {}",
                    clip(&text)
                ))
            })
    }
}

impl Planner for RemotePlanner {
    fn describe(&self) -> String {
        format!("{} (model {})", self.base, self.model)
    }

    fn plan(&self, request: &PlanRequest<'_>) -> Result<Planned> {
        let mut messages =
            vec![json!({"role": "system", "content": system_prompt(request.catalog)})];
        for (user, images, plan) in DEMONSTRATIONS {
            messages.push(json!({"role": "user", "content": user_message(user, *images)}));
            messages.push(json!({"role": "assistant", "content": plan}));
        }
        messages
            .push(json!({"role": "user", "content": user_message(request.text, request.images)}));
        let raw = self.complete(messages)?;
        let plan = Plan::parse(&raw).map_err(|e| {
            self.fail(match e {
                Error::PlanSyntax(m) if m.starts_with("no JSON plan") => {
                    format!("the reply holds no plan: {:?}", clip(&raw))
                }
                other => format!("the reply holds no plan ({other}): {:?}", clip(&raw)),
            })
        })?;
        Ok(Planned { plan, raw })
    }
}

impl Chooser for RemotePlanner {
    fn choose(
        &self,
        request: &str,
        task: &PlanTask,
        candidates: &[&Entry],
    ) -> Result<(usize, String)> {
        let task_json = Plan {
            tasks: vec![task.clone()],
        }
        .to_json();
        let list: Vec<String> = candidates
            .iter()
            .map(|c| format!("- {}", c.summary()))
            .collect();
        let messages = vec![
            json!({"role": "system", "content":
                "#2 Model Selection Stage: given the user request and one parsed task, the AI \
                 assistant chooses the most suitable model from the list of candidates. Reply \
                 in JSON only: {\"id\": \"<model id>\", \"reason\": \"<why in one sentence>\"}."}),
            json!({"role": "user", "content": format!(
                "Request: {request}\nTask: {task_json}\nCandidates:\n{}",
                list.join("\n")
            )}),
        ];
        let raw = self.complete(messages)?;
        let parsed = first_object(&raw);
        let id = parsed
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .map(str::trim);
        if let Some(i) = id.and_then(|id| candidates.iter().position(|c| c.id == id)) {
            let why = parsed
                .as_ref()
                .and_then(|v| v.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Ok((i, format!("chosen by {}: {why}", self.model)));
        }
        // The LLM named no candidate: choose by rule and say so.
        let (i, rule) = RuleChooser.choose(request, task, candidates)?;
        Ok((
            i,
            format!(
                "{}'s reply named no candidate ({}); {rule}",
                self.model,
                clip(raw.trim())
            ),
        ))
    }
}

/// HuggingGPT's task-planning instruction over `catalog`.
pub fn system_prompt(catalog: &Catalog) -> String {
    let tasks: Vec<String> = catalog
        .specs()
        .iter()
        .map(|s| {
            let mut args: Vec<String> = s.required.iter().map(|a| a.to_string()).collect();
            args.extend(s.optional.iter().map(|a| format!("{a} (optional)")));
            format!(
                "- {}: {} Arguments: {}.",
                s.name,
                s.description,
                args.join(", ")
            )
        })
        .collect();
    format!(
        "#1 Task Planning Stage: the AI assistant parses the user's request into tasks, in \
         JSON: {{\"tasks\": [{{\"id\": task id, \"task\": task name, \"dep\": [ids of earlier \
         tasks whose results this task uses, or -1], \"args\": {{\"image\": ..., \"text\": \
         ..., \"question\": ..., \"labels\": [...]}}}}]}}. \"<resource>-N\" as an argument is \
         the result of task N, and N must be in \"dep\". \"<image>-K\" is the K-th image that \
         came with the request, counted from 1. Ids start at 0 and a task only uses earlier \
         tasks. A task on several images is written once per image. The task names MUST be \
         chosen from this list:\n{}\nReply with the JSON plan only. If the request cannot be \
         done with these tasks, reply {{\"tasks\": []}}.",
        tasks.join("\n")
    )
}

fn user_message(text: &str, images: usize) -> String {
    match images {
        0 => text.to_string(),
        1 => format!("{text}\n(1 image: <image>-1)"),
        n => format!("{text}\n({n} images: <image>-1 to <image>-{n})"),
    }
}

/// Requests and their plans shown before the user's (HuggingGPT's demonstrations).
const DEMONSTRATIONS: &[(&str, usize, &str)] = &[
    (
        "what is in this picture?",
        1,
        r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}}]}"#,
    ),
    (
        "which of these images has a red circle, and what else is in it?",
        2,
        r#"{"tasks":[{"id":0,"task":"image-text-matching","dep":[-1],"args":{"image":"<image>-1","text":"a red circle"}},{"id":1,"task":"image-text-matching","dep":[-1],"args":{"image":"<image>-2","text":"a red circle"}},{"id":2,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":3,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-2"}}]}"#,
    ),
    (
        "find images like this one and say what they share",
        1,
        r#"{"tasks":[{"id":0,"task":"image-to-image-retrieval","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]}"#,
    ),
];

fn first_object(text: &str) -> Option<Value> {
    text.char_indices()
        .filter(|(_, c)| *c == '{')
        .find_map(|(i, _)| {
            serde_json::Deserializer::from_str(&text[i..])
                .into_iter::<Value>()
                .next()
                .and_then(|v| v.ok())
                .filter(Value::is_object)
        })
}

fn clip(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if t.len() < text.len() {
        format!("{t}...")
    } else {
        t
    }
}
