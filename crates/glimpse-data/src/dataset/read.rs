//! Reading raw samples out of each kind of source, without decoding images.
//!
//! Every reader yields [`Raw`] items, one per position of the epoch: a sample that
//! looks usable, or a [`Raw::Bad`] that will be counted as skipped. Problems of one
//! sample (no image, no metadata, malformed JSON) and a broken shard tail are `Bad`
//! items rather than errors, so that one bad file costs one sample, not a training run.
//! Image files named by JSONL and COCO sources are only read after shuffling and
//! skipping, so the shuffle buffer holds paths, and a resume reads nothing it drops.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{RawSample, Source};
use crate::tar::TarReader;
use crate::{Error, Result};

/// Image entry extensions of a WebDataset sample, in order of preference.
const IMAGE_EXTS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "image"];
/// Fields of a JSONL record that may name its image, in order of preference.
const IMAGE_FIELDS: [&str; 3] = ["image", "file_name", "image_path"];

/// One position of an epoch before decoding.
pub(crate) enum Raw {
    Sample(Pending),
    /// Counted as skipped; the reason already says why.
    Bad {
        source: Arc<str>,
        key: String,
        reason: String,
    },
    /// The rest of a source is unreadable: one position, counted as skipped, whose
    /// reason names the source itself rather than a sample.
    Lost(String),
}

/// A sample whose image may still be on disk.
pub(crate) struct Pending {
    pub key: String,
    pub source: Arc<str>,
    pub image: ImageRef,
    pub meta: Value,
}

pub(crate) enum ImageRef {
    /// Bytes already read (a tar entry) and the entry's name.
    Bytes { name: String, bytes: Vec<u8> },
    /// Candidate files, tried in order.
    Files(Vec<PathBuf>),
}

impl Raw {
    fn bad(source: &Arc<str>, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Raw::Bad {
            source: source.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `SOURCE: sample KEY: REASON`, the form of every skip message.
pub(crate) fn skip_message(source: &str, key: &str, reason: &str) -> String {
    format!("{source}: sample {key}: {reason}")
}

impl Pending {
    /// Reads the image file if it is not in memory yet; `Err` is a skip message.
    pub fn load(self) -> std::result::Result<RawSample, String> {
        let (image_name, image_bytes) = match self.image {
            ImageRef::Bytes { name, bytes } => (name, bytes),
            ImageRef::Files(candidates) => {
                let mut tried = Vec::new();
                let mut found = None;
                for path in &candidates {
                    match fs::read(path) {
                        Ok(bytes) => {
                            found = Some((path.display().to_string(), bytes));
                            break;
                        }
                        Err(e) => tried.push(format!("{}: {e}", path.display())),
                    }
                }
                match found {
                    Some(f) => f,
                    None => {
                        return Err(skip_message(
                            &self.source,
                            &self.key,
                            &format!("cannot read image ({})", tried.join("; ")),
                        ))
                    }
                }
            }
        };
        Ok(RawSample {
            key: self.key,
            source: self.source.to_string(),
            image_name,
            image_bytes,
            meta: self.meta,
        })
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The raw items of `source`, or an error when it cannot be opened or parsed at all.
pub(crate) fn open(source: &Source) -> Result<Box<dyn Iterator<Item = Raw> + Send>> {
    let name: Arc<str> = source.to_string().into();
    Ok(match source {
        Source::Shard(path) => {
            let file = File::open(path).map_err(io_error(path))?;
            Box::new(ShardItems {
                tar: TarReader::new(BufReader::new(file)),
                source: name,
                next: None,
                error: None,
                last_key: None,
                samples: 0,
                done: false,
            })
        }
        Source::Jsonl(path) => {
            let file = File::open(path).map_err(io_error(path))?;
            Box::new(JsonlItems {
                lines: BufReader::new(file),
                dir: parent_dir(path),
                source: name,
                line: 0,
                done: false,
            })
        }
        Source::Coco(path) => Box::new(coco_items(path, name)?.into_iter()),
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Samples of a WebDataset shard: consecutive entries sharing a key (the entry name
/// up to the first dot of its base name) form one sample.
struct ShardItems {
    tar: TarReader<BufReader<File>>,
    source: Arc<str>,
    /// The first entry of the next sample, read while closing the previous one.
    next: Option<(String, String, Vec<u8>)>,
    /// A read error met while closing the previous sample; reported next.
    error: Option<io::Error>,
    last_key: Option<String>,
    /// Samples yielded so far, for the message of a cut.
    samples: u64,
    done: bool,
}

fn split_entry_name(name: &str) -> (String, String) {
    let base_at = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_at..].find('.') {
        Some(d) => (
            name[..base_at + d].to_string(),
            name[base_at + d + 1..].to_ascii_lowercase(),
        ),
        None => (name.to_string(), String::new()),
    }
}

impl ShardItems {
    fn entry(&mut self) -> io::Result<Option<(String, String, Vec<u8>)>> {
        if let Some(e) = self.next.take() {
            return Ok(Some(e));
        }
        Ok(self.tar.next_entry()?.map(|(name, data)| {
            let (key, ext) = split_entry_name(&name);
            (key, ext, data)
        }))
    }

    /// The item that ends a shard cut short: one position, whose message names the
    /// shard and how far it was read, since the samples lost after the cut are unknown.
    fn tail(&mut self, e: io::Error) -> Raw {
        self.done = true;
        let reason = match &self.last_key {
            Some(k) => format!(
                "the shard is truncated or corrupt after {} samples (the last was {k}); \
                 the rest of it is lost",
                self.samples
            ),
            None => "the shard is truncated or corrupt before its first sample".to_string(),
        };
        Raw::Lost(format!("{}: {reason}: {e}", self.source))
    }

    fn assemble(&self, key: String, parts: Vec<(String, Vec<u8>)>, cut: bool) -> Raw {
        let cut_note = if cut {
            " (the shard ends inside this sample)"
        } else {
            ""
        };
        let find = |ext: &str| parts.iter().position(|(e, _)| e == ext);
        let Some(img) = IMAGE_EXTS.iter().find_map(|ext| find(ext)) else {
            let exts: Vec<&str> = parts.iter().map(|(e, _)| e.as_str()).collect();
            return Raw::bad(
                &self.source,
                key,
                format!(
                    "no image entry (.png/.jpg/.jpeg/.webp) among [{}]{cut_note}",
                    exts.join(", ")
                ),
            );
        };
        let txt = find("txt").map(|i| String::from_utf8_lossy(&parts[i].1).trim().to_string());
        let meta = match (find("json"), txt) {
            (Some(i), txt) => match serde_json::from_slice::<Value>(&parts[i].1) {
                Ok(mut v) => {
                    if let (Some(obj), Some(t)) = (v.as_object_mut(), txt) {
                        obj.entry("caption").or_insert(Value::String(t));
                    }
                    v
                }
                Err(e) => {
                    return Raw::bad(&self.source, key, format!("malformed .json entry: {e}"))
                }
            },
            (None, Some(t)) => serde_json::json!({ "caption": t }),
            (None, None) => {
                return Raw::bad(
                    &self.source,
                    key,
                    format!("no .json or .txt entry{cut_note}"),
                )
            }
        };
        let mut parts = parts;
        let (ext, bytes) = parts.swap_remove(img);
        Raw::Sample(Pending {
            image: ImageRef::Bytes {
                name: format!("{key}.{ext}"),
                bytes,
            },
            key,
            source: self.source.clone(),
            meta,
        })
    }
}

impl Iterator for ShardItems {
    type Item = Raw;

    fn next(&mut self) -> Option<Raw> {
        if self.done {
            return None;
        }
        if let Some(e) = self.error.take() {
            return Some(self.tail(e));
        }
        let (key, ext, data) = match self.entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => return Some(self.tail(e)),
        };
        let mut parts = vec![(ext, data)];
        let mut cut = false;
        loop {
            match self.entry() {
                Ok(Some((k, e, d))) if k == key => parts.push((e, d)),
                Ok(Some(other)) => {
                    self.next = Some(other);
                    break;
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.error = Some(e);
                    cut = true;
                    break;
                }
            }
        }
        self.last_key = Some(key.clone());
        self.samples += 1;
        Some(self.assemble(key, parts, cut))
    }
}

/// Lines of a JSONL file; blank lines are not samples.
struct JsonlItems {
    lines: BufReader<File>,
    dir: PathBuf,
    source: Arc<str>,
    line: u64,
    done: bool,
}

impl JsonlItems {
    fn record(&self, bytes: &[u8]) -> Raw {
        let line_key = format!("line {}", self.line);
        let obj: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Raw::bad(&self.source, line_key, "not a JSON object"),
            Err(e) => return Raw::bad(&self.source, line_key, format!("malformed JSON: {e}")),
        };
        let Some(rel) = IMAGE_FIELDS
            .iter()
            .find_map(|f| obj.get(*f).and_then(Value::as_str))
        else {
            return Raw::bad(
                &self.source,
                line_key,
                format!("no image path (one of {IMAGE_FIELDS:?} as a string)"),
            );
        };
        let key = match obj.get("key").or_else(|| obj.get("id")) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Number(_)) => v.to_string(),
            _ => rel.to_string(),
        };
        Raw::Sample(Pending {
            key,
            source: self.source.clone(),
            image: ImageRef::Files(vec![self.dir.join(rel)]),
            meta: Value::Object(obj),
        })
    }
}

impl Iterator for JsonlItems {
    type Item = Raw;

    fn next(&mut self) -> Option<Raw> {
        let mut buf = Vec::new();
        while !self.done {
            buf.clear();
            match self.lines.read_until(b'\n', &mut buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line += 1;
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(self.record(&buf));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Raw::bad(
                        &self.source,
                        format!("<after line {}>", self.line),
                        format!("read error, rest of the file skipped: {e}"),
                    ));
                }
            }
        }
        None
    }
}

/// One item per image of a COCO captions file, in `images` order, with `captions`
/// (all of its captions in annotation order) and `caption` (the first).
fn coco_items(path: &Path, source: Arc<str>) -> Result<Vec<Raw>> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    let not_coco = |what: &str| {
        Error::config(
            path.display().to_string(),
            format!("not a COCO captions file: {what}"),
        )
    };
    let images = doc
        .get("images")
        .and_then(Value::as_array)
        .ok_or_else(|| not_coco("no \"images\" array"))?;
    let empty = Vec::new();
    let annotations = match doc.get("annotations") {
        None => &empty,
        Some(a) => a
            .as_array()
            .ok_or_else(|| not_coco("\"annotations\" is not an array"))?,
    };
    let id_key = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut captions: HashMap<String, Vec<Value>> = HashMap::new();
    for a in annotations {
        if let (Some(id), Some(c)) = (a.get("image_id"), a.get("caption")) {
            captions.entry(id_key(id)).or_default().push(c.clone());
        }
    }
    let dir = parent_dir(path);
    let items = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let Some(mut obj) = img.as_object().cloned() else {
                return Raw::bad(&source, format!("images[{i}]"), "not a JSON object");
            };
            let key = obj.get("id").map_or(format!("images[{i}]"), id_key);
            let Some(file) = obj.get("file_name").and_then(Value::as_str) else {
                return Raw::bad(&source, key, "no \"file_name\" string");
            };
            let candidates = vec![dir.join(file), dir.join("images").join(file)];
            let caps = captions.remove(&key).unwrap_or_default();
            if let Some(first) = caps.first() {
                obj.insert("caption".into(), first.clone());
            }
            obj.insert("captions".into(), Value::Array(caps));
            Raw::Sample(Pending {
                key,
                source: source.clone(),
                image: ImageRef::Files(candidates),
                meta: Value::Object(obj),
            })
        })
        .collect();
    Ok(items)
}
