//! External tools: what Glimpse does not run itself (detection, pose, speech, image
//! generation), declared in a registry file and run as tasks, as HuggingGPT calls
//! Hugging Face's hosted models.
//!
//! A tool is a command line or an HTTP endpoint. Both get the same JSON,
//! `{"task": NAME, "args": {"image": PATH, "text": ..., "question": ..., "labels": [...]}}`
//! (a command on stdin, an endpoint as a POST body), and answer with one JSON object
//! in the shape of the task's output kind: `{"text": ...}`, `{"labels": [{"label",
//! "score"}]}`, `{"score": x}`, `{"images": [{"key","path","score","text"}]}` or
//! `{"image": PATH}`. A command's argv may hold `{image}`, `{text}`, `{question}` and
//! `{labels}`, replaced by the arguments. Every call has a timeout; a tool that
//! overruns it is killed and the task fails naming it.
//!
//! The file (TOML, or JSON with the same structure) lists `[[tool]]` tables; see
//! docs/agent.md.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::execute::{Output, Retrieved, Scored};
use crate::tasks::{ArgName, OutputKind, TaskSpec};
use crate::{Error, Result};

/// One declared tool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// How the registry and reports name it.
    pub id: String,
    /// The task type it performs: a built-in one or a new one.
    pub task: String,
    pub description: String,
    /// Required arguments.
    pub inputs: Vec<ArgName>,
    #[serde(default)]
    pub optional: Vec<ArgName>,
    pub output: OutputKind,
    /// argv: program and arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An HTTP endpoint that takes a POST.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Describes the task type when it is new (default: `description`).
    #[serde(default)]
    pub task_description: Option<String>,
    /// The command's working directory: the registry file's directory.
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_timeout() -> f64 {
    60.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    tool: Vec<Tool>,
}

/// The tools a registry file declares, checked: an id, a task name, one of `command`
/// and `url`, at least one input, a positive timeout.
pub fn read_registry(path: &Path) -> Result<Vec<Tool>> {
    let fail = |msg: String| Error::Registry {
        path: path.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: RegistryFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| fail(e.to_string()))?
    };
    if file.tool.is_empty() {
        return Err(fail("declares no [[tool]]".into()));
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    file.tool
        .into_iter()
        .map(|mut t| {
            let bad = |msg: &str| fail(format!("tool `{}`: {msg}", t.id));
            if t.id.trim().is_empty() || t.task.trim().is_empty() {
                return Err(fail("a tool needs a non-empty `id` and `task`".into()));
            }
            match (&t.command, &t.url) {
                (Some(c), None) if !c.is_empty() => {}
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                (Some(_), Some(_)) => return Err(bad("give `command` or `url`, not both")),
                (None, Some(u)) => return Err(bad(&format!("`url` {u:?} is not http(s)"))),
                _ => return Err(bad("needs a non-empty `command` list or a `url`")),
            }
            if t.inputs.is_empty() {
                return Err(bad("`inputs` lists no argument"));
            }
            if !(t.timeout_s > 0.0 && t.timeout_s.is_finite()) {
                return Err(bad("`timeout_s` must be positive"));
            }
            t.dir = dir.clone();
            Ok(t)
        })
        .collect()
}

impl Tool {
    /// The command line or URL, for listings.
    pub fn endpoint(&self) -> String {
        match (&self.command, &self.url) {
            (Some(c), _) => c.join(" "),
            (None, Some(u)) => u.clone(),
            (None, None) => String::new(),
        }
    }

    /// The task type this tool declares, for a catalog that does not know it yet.
    pub fn task_spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.task.clone(),
            description: self
                .task_description
                .clone()
                .unwrap_or_else(|| self.description.clone()),
            required: self.inputs.clone(),
            optional: self.optional.clone(),
            output: self.output,
        }
    }

    /// Runs the tool on `args`; its answer must be of the declared output kind.
    pub fn call(&self, args: &BTreeMap<ArgName, serde_json::Value>) -> Result<Output> {
        let body = serde_json::json!({
            "task": self.task,
            "args": args.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
        })
        .to_string();
        let timeout = Duration::from_secs_f64(self.timeout_s);
        let reply = match (&self.command, &self.url) {
            (Some(argv), _) => self.run_command(argv, args, &body, timeout)?,
            (None, Some(url)) => self.post(url, &body, timeout)?,
            (None, None) => return Err(self.fail("declares neither a command nor a url")),
        };
        self.read_output(&reply)
    }

    fn fail(&self, msg: impl Into<String>) -> Error {
        Error::Tool {
            tool: self.id.clone(),
            msg: msg.into(),
        }
    }

    fn run_command(
        &self,
        argv: &[String],
        args: &BTreeMap<ArgName, serde_json::Value>,
        body: &str,
        timeout: Duration,
    ) -> Result<String> {
        let fill = |s: &str| {
            let mut s = s.to_string();
            for name in ArgName::ALL {
                let key = format!("{{{name}}}");
                if s.contains(&key) {
                    let v = match args.get(&name) {
                        Some(serde_json::Value::String(t)) => t.clone(),
                        Some(serde_json::Value::Array(items)) => items
                            .iter()
                            .filter_map(|i| i.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        _ => String::new(),
                    };
                    s = s.replace(&key, &v);
                }
            }
            s
        };
        let program = fill(&argv[0]);
        let mut child = Command::new(&program)
            .args(argv[1..].iter().map(|a| fill(a)))
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.fail(format!("cannot start `{program}`: {e}")))?;
        // Writing and reading on threads: a tool that neither reads its input nor
        // ends cannot block the agent past the timeout.
        let mut stdin = child.stdin.take().expect("piped");
        let body = body.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(body.as_bytes());
        });
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let mut stderr = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stderr.read_to_string(&mut out);
            out
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.fail(format!(
                        "`{program}` gave no answer within {:.1} s and was stopped",
                        timeout.as_secs_f64()
                    )));
                }
                Err(e) => return Err(self.fail(format!("waiting for `{program}`: {e}"))),
            }
        };
        let _ = writer.join();
        let out = reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        if !status.success() {
            return Err(self.fail(format!("`{program}` exited with {status}: {}", err.trim())));
        }
        Ok(out)
    }

    fn post(&self, url: &str, body: &str, timeout: Duration) -> Result<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| self.fail(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.fail(format!("POST {url}: reading the reply: {e}")))?;
        if status != 200 {
            return Err(self.fail(format!("POST {url}: status {status}: {}", clip(&text))));
        }
        Ok(text)
    }

    /// The tool's JSON answer as an output of the declared kind.
    fn read_output(&self, reply: &str) -> Result<Output> {
        let v: serde_json::Value = serde_json::from_str(reply.trim()).map_err(|e| {
            self.fail(format!(
                "the answer is not JSON ({e}): {:?}",
                clip(reply.trim())
            ))
        })?;
        let wrong = |what: &str| {
            self.fail(format!(
                "declares output `{}` but answered without {what}: {}",
                serde_json::to_string(&self.output).unwrap_or_default(),
                clip(reply.trim())
            ))
        };
        Ok(match self.output {
            OutputKind::Text => Output::Text {
                text: v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| wrong("a `text` string"))?
                    .to_string(),
            },
            OutputKind::Score => Output::Score {
                score: v
                    .get("score")
                    .and_then(|s| s.as_f64())
                    .ok_or_else(|| wrong("a `score` number"))? as f32,
            },
            OutputKind::Labels => Output::Labels {
                labels: serde_json::from_value::<Vec<Scored>>(
                    v.get("labels").cloned().ok_or_else(|| wrong("`labels`"))?,
                )
                .map_err(|_| wrong("`labels` as [{\"label\", \"score\"}]"))?,
            },
            OutputKind::Images => Output::Images {
                images: serde_json::from_value::<Vec<Retrieved>>(
                    v.get("images").cloned().ok_or_else(|| wrong("`images`"))?,
                )
                .map_err(|_| wrong("`images` as [{\"key\", \"path\", \"score\"}]"))?,
            },
            OutputKind::Image => Output::Image {
                path: v
                    .get("image")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| wrong("an `image` path"))?
                    .to_string(),
            },
        })
    }
}

fn clip(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if t.len() < text.len() {
        format!("{t}...")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn args(image: &Path) -> BTreeMap<ArgName, serde_json::Value> {
        BTreeMap::from([(ArgName::Image, image.display().to_string().into())])
    }

    #[test]
    fn the_fixture_tool_reads_a_png_size() {
        let tools = read_registry(&fixtures().join("tools.toml")).unwrap();
        let size = tools.iter().find(|t| t.id == "png-size").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let png = tmp.path().join("x.png");
        image::RgbImage::new(37, 21).save(&png).unwrap();
        let out = size.call(&args(&png)).unwrap();
        assert_eq!(
            out,
            Output::Text {
                text: "37x21 pixels".into()
            }
        );
        let err = size
            .call(&args(&tmp.path().join("missing.png")))
            .unwrap_err();
        assert!(err.to_string().contains("png-size"), "{err}");
    }

    #[test]
    fn a_tool_past_its_timeout_is_stopped_and_named() {
        let tool = Tool {
            id: "sleeper".into(),
            task: "image-size".into(),
            description: "sleeps".into(),
            inputs: vec![ArgName::Image],
            optional: vec![],
            output: OutputKind::Text,
            command: Some(vec!["sleep".into(), "30".into()]),
            url: None,
            timeout_s: 0.3,
            tags: vec![],
            task_description: None,
            dir: PathBuf::from("."),
        };
        let started = Instant::now();
        let err = tool.call(&args(Path::new("x.png"))).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("sleeper"), "{err}");
        assert!(err.to_string().contains("within 0.3 s"), "{err}");
    }

    #[test]
    fn bad_registry_files_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("r.toml");
        let cases = [
            ("", "declares no"),
            (
                "[[tool]]\nid='a'\ntask='t'\ndescription='d'\ninputs=['image']\noutput='text'\n",
                "`command`",
            ),
            (
                "[[tool]]\nid='a'\ntask='t'\ndescription='d'\ninputs=['image']\noutput='text'\nurl='ftp://x'\n",
                "not http",
            ),
            (
                "[[tool]]\nid='a'\ntask='t'\ndescription='d'\ninputs=['colour']\noutput='text'\ncommand=['x']\n",
                "colour",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&path, text).unwrap();
            let err = read_registry(&path).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("r.toml"),
                "{text}: {err}"
            );
        }
    }
}
