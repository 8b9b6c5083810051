//! Chat messages and the Jinja chat template that turns them into a prompt.
//!
//! Messages are passed to the template the way transformers' processors pass them
//! (`apply_chat_template`, 5.24): `{"role": ..., "content": [{"type": "image"},
//! {"type": "text", "text": ...}]}`, with `add_generation_prompt` and the tokenizer's
//! special tokens (`bos_token`, `eos_token`, ...) as variables. The environment is set
//! up as the reference's: `trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, a `tojson` that does not escape HTML, and Python string methods
//! (`.strip()`, `.startswith()`, ...) through minijinja's pycompat.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Content {
    /// Where the image goes; the template writes the `<image>` placeholder for it.
    Image,
    Text {
        text: String,
    },
}

/// A chat message in the processor's structured form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Vec<Content>,
}

impl ChatMessage {
    /// A user message; with `image` the image part comes first, as in the reference's
    /// examples.
    pub fn user(text: &str, image: bool) -> Self {
        let mut content = Vec::with_capacity(2);
        if image {
            content.push(Content::Image);
        }
        content.push(Content::Text { text: text.into() });
        Self {
            role: Role::User,
            content,
        }
    }

    pub fn assistant(text: &str) -> Self {
        Self {
            role: Role::Assistant,
            content: vec![Content::Text { text: text.into() }],
        }
    }

    pub fn system(text: &str) -> Self {
        Self {
            role: Role::System,
            content: vec![Content::Text { text: text.into() }],
        }
    }
}

/// The prompt format of LLaVA-1.5 (`USER: <image>\n{question} ASSISTANT:`), used when
/// a checkpoint ships no template.
const LLAVA_15: &str = concat!(
    "{% for m in messages %}",
    "{% if m.role == 'system' %}",
    "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{{ ' ' }}",
    "{% else %}",
    "{{ m.role | upper }}{{ ': ' }}",
    "{% for p in m.content %}{% if p.type == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}",
    "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}",
    "{% if m.role == 'assistant' %}{{ eos_token or '</s>' }}{% else %}{{ ' ' }}{% endif %}",
    "{% endif %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
);

/// Special-token variables the reference passes to templates.
const SPECIAL: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A chat template and the variables it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    /// Where the template came from, for errors.
    pub origin: PathBuf,
    /// `bos_token`, `eos_token`, ... as text.
    pub special_tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, origin: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            origin: origin.into(),
            special_tokens: BTreeMap::new(),
        }
    }

    /// The built-in LLaVA-1.5 format.
    pub fn llava_default() -> Self {
        Self::new(LLAVA_15, "<built-in LLaVA-1.5 template>")
    }

    /// The template stored with a checkpoint (`chat_template.jinja`, then
    /// `chat_template.json`, then `tokenizer_config.json`'s `chat_template`), with the
    /// special tokens of `tokenizer_config.json`; `None` when there is none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let tok_cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = read_json(&tok_cfg_path)?;
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        let found = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                path: jinja.clone(),
                source,
            })?;
            Some((text, jinja))
        } else if let Some(t) = read_json(&json)?.as_ref().and_then(template_of) {
            Some((t, json))
        } else {
            tok_cfg
                .as_ref()
                .and_then(template_of)
                .map(|t| (t, tok_cfg_path.clone()))
        };
        let Some((source, origin)) = found else {
            return Ok(None);
        };
        let mut template = Self::new(source, origin);
        if let Some(cfg) = &tok_cfg {
            for key in SPECIAL {
                if let Some(text) = cfg.get(key).and_then(token_text) {
                    template.special_tokens.insert(key.into(), text);
                }
            }
        }
        Ok(Some(template))
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant's cue.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let fail = |e: minijinja::Error| Error::Config {
            path: self.origin.clone(),
            msg: format!("chat template: {e:#}"),
        };
        let env = environment();
        let template = env.template_from_str(&self.source).map_err(fail)?;
        let mut ctx: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        template.render(Value::from(ctx)).map_err(fail)
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_filter("tojson", tojson);
    env
}

/// JSON without HTML escaping, as the reference's override of `tojson`.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, minijinja::Error> {
    let text = match indent {
        Some(_) => serde_json::to_string_pretty(&value),
        None => serde_json::to_string(&value),
    }
    .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `chat_template` as a string, or the `"default"` (else first) of a named list.
fn template_of(cfg: &serde_json::Value) -> Option<String> {
    match cfg.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|v| v.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// A special token written as a string or as `{"content": ...}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
