//! Text corpora for language models: the synthetic world written as documents
//! ([`write_world_corpus`]), and any JSONL corpus read back as a training source
//! ([`TextCorpus`]).
//!
//! A world corpus holds, per scene, its caption paraphrases, its question/answer pairs
//! in BLIP-2's zero-shot VQA prompt (`question: ... answer: ...`), one short
//! instruction with a caption as the reply and one dialogue of two or three turns in
//! LLaVA's `USER: ... ASSISTANT: ...` form. Scenes keep the split the image world gives
//! them (`SynthConfig::split_of`), so a language model trained on `train.jsonl` never
//! read the text of the validation or test images that later stages evaluate on.
//!
//! A corpus line is `{"key", "kind", "text"}` with an optional `prompt`: a prefix the
//! model reads but is not scored on (for prompt → completion data such as a planner's
//! request → plan).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use glimpse_data::dataset::{Example, LoaderStats};
use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_synth::{sample, Split, SynthConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// Salt of the corpus's own draws (dialogue turns, instruction wording), apart from
/// the world's streams.
const CORPUS_SALT: u64 = 0x7e47_c0a5;

/// What a user asks for when the reply is a caption.
const INSTRUCTIONS: [&str; 5] = [
    "describe the picture.",
    "write a short caption for the image.",
    "what do you see?",
    "tell me what is in the image.",
    "give a one-line description of the scene.",
];

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub key: String,
    /// `caption`, `qa`, `instruction` or `dialogue` in a world corpus.
    pub kind: String,
    /// Read but not scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub text: String,
}

/// The documents of scene `index` of the world `cfg` describes (captions clean).
pub fn world_documents(cfg: &SynthConfig, index: u64) -> Vec<Document> {
    let r = sample(cfg, index).record;
    let mut rng = Rng::derive(cfg.seed ^ CORPUS_SALT, index, 0);
    let doc = |kind: &str, j: usize, text: String| Document {
        key: format!("{}-{kind}-{j}", r.key),
        kind: kind.to_string(),
        prompt: None,
        text,
    };
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for c in &r.captions {
        if !seen.contains(&c.as_str()) {
            seen.push(c);
            out.push(doc("caption", out.len(), c.clone()));
        }
    }
    for (j, qa) in r.qa.iter().enumerate() {
        out.push(doc(
            "qa",
            j,
            format!("question: {} answer: {}", qa.question, qa.answer),
        ));
    }
    let instruction = INSTRUCTIONS[rng.below_from_unit(INSTRUCTIONS.len())];
    let reply = &r.captions[rng.below_from_unit(r.captions.len())];
    out.push(doc(
        "instruction",
        0,
        format!("USER: {instruction} ASSISTANT: {reply}"),
    ));
    if !r.qa.is_empty() {
        // Two or three distinct turns, in drawn order.
        let turns = (2 + rng.below_from_unit(2)).min(r.qa.len());
        let mut order: Vec<usize> = (0..r.qa.len()).collect();
        for i in 0..turns {
            let j = i + rng.below_from_unit(order.len() - i);
            order.swap(i, j);
        }
        let text = order[..turns]
            .iter()
            .map(|&i| format!("USER: {} ASSISTANT: {}", r.qa[i].question, r.qa[i].answer))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(doc("dialogue", 0, text));
    }
    out
}

/// One split's file of a corpus.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusFile {
    pub split: String,
    /// The file name inside the corpus directory.
    pub file: String,
    pub documents: u64,
}

/// What [`write_world_corpus`] wrote (also `OUT/manifest.json`).
#[derive(Debug, Clone, Serialize)]
pub struct CorpusManifest {
    pub seed: u64,
    pub scenes: u64,
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// One per split, in the output directory.
    pub files: Vec<CorpusFile>,
    /// Documents per kind, all splits together.
    pub kinds: Vec<(String, u64)>,
}

/// Writes the world `cfg` describes (`count` scenes, its seed and split fractions) as
/// `OUT/{train,val,test}.jsonl` and `OUT/manifest.json`. Each file is written whole
/// under a temporary name and renamed, so a killed run leaves no partial corpus and a
/// rerun writes the same bytes. `progress` is called with the scenes done.
pub fn write_world_corpus(
    out: &Path,
    cfg: &SynthConfig,
    mut progress: impl FnMut(u64),
) -> Result<CorpusManifest> {
    cfg.validate()
        .map_err(|e| Error::Train(format!("corpus: {e}")))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io_ctx(out, e))?;
    let splits = [Split::Train, Split::Val, Split::Test];
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); splits.len()];
    let mut counts = [0u64; 3];
    let mut kinds: Vec<(String, u64)> = Vec::new();
    for i in 0..cfg.count {
        let s = splits
            .iter()
            .position(|s| *s == cfg.split_of(i))
            .expect("three splits");
        for d in world_documents(cfg, i) {
            match kinds.iter_mut().find(|(k, _)| *k == d.kind) {
                Some(k) => k.1 += 1,
                None => kinds.push((d.kind.clone(), 1)),
            }
            serde_json::to_writer(&mut buffers[s], &d).expect("a document serialises");
            buffers[s].push(b'\n');
            counts[s] += 1;
        }
        progress(i + 1);
    }
    let mut files = Vec::new();
    for ((split, buf), n) in splits.iter().zip(&buffers).zip(counts) {
        let file = format!("{}.jsonl", split.as_str());
        write_atomic(&out.join(&file), buf)?;
        files.push(CorpusFile {
            split: split.as_str().to_string(),
            file,
            documents: n,
        });
    }
    let manifest = CorpusManifest {
        seed: cfg.seed,
        scenes: cfg.count,
        val_fraction: cfg.val_fraction,
        test_fraction: cfg.test_fraction,
        files,
        kinds,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    write_atomic(&out.join("manifest.json"), &text)?;
    Ok(manifest)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    glimpse_data::atomic::write(path, bytes).map_err(|(p, e)| Error::io_ctx(&p, e))
}

/// A JSONL corpus in memory: one object per line with a non-empty `text` string (and
/// optionally `key`, `kind`, `prompt`). A malformed line is an error naming it.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    pub path: PathBuf,
    /// `(key, the line's object)`.
    docs: Vec<(String, Value)>,
}

impl TextCorpus {
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::io_ctx(
                path,
                "is a directory; a language-model recipe reads one JSONL text file \
                 (e.g. train.jsonl of `glimpse data corpus`)",
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io_ctx(path, e))?;
        let mut docs = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| Error::io_ctx(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| Error::Train(format!("{}: not JSON: {e}", at())))?;
            let ok = v
                .get("text")
                .and_then(|t| t.as_str())
                .is_some_and(|t| !t.trim().is_empty());
            if !ok {
                return Err(Error::Train(format!(
                    "{}: no non-empty \"text\" string",
                    at()
                )));
            }
            if v.get("prompt").is_some_and(|p| !p.is_string()) {
                return Err(Error::Train(format!(
                    "{}: \"prompt\" is not a string",
                    at()
                )));
            }
            let key = v
                .get("key")
                .and_then(|k| k.as_str())
                .map(String::from)
                .unwrap_or_else(|| format!("line-{}", i + 1));
            docs.push((key, v));
        }
        if docs.is_empty() {
            return Err(Error::io_ctx(path, "holds no document"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            docs,
        })
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Every document's text and prompt, in file order (for building a vocabulary).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.docs.iter().flat_map(|(_, v)| {
            ["prompt", "text"]
                .into_iter()
                .filter_map(move |f| v.get(f).and_then(|t| t.as_str()))
        })
    }

    /// Epoch `epoch` from `position` on: a permutation of the documents that depends
    /// only on `(seed, epoch)` (file order when `shuffle` is false), as examples with an
    /// empty image and the line's object as `meta`.
    pub fn epoch(&self, seed: u64, epoch: u64, position: u64, shuffle: bool) -> TextEpoch<'_> {
        let mut order: Vec<u32> = (0..self.docs.len() as u32).collect();
        if shuffle {
            let mut rng = Rng::salted(CORPUS_SALT, seed, epoch, 0);
            for i in (1..order.len()).rev() {
                let j = rng.below_from_high_bits(i + 1);
                order.swap(i, j);
            }
        }
        TextEpoch {
            corpus: self,
            order,
            next: position as usize,
        }
    }
}

/// One pass over a [`TextCorpus`]; see [`TextCorpus::epoch`].
pub struct TextEpoch<'a> {
    corpus: &'a TextCorpus,
    order: Vec<u32>,
    next: usize,
}

impl TextEpoch<'_> {
    /// Documents taken so far this epoch, the resume point.
    pub fn position(&self) -> u64 {
        self.next as u64
    }

    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            yielded: self.next.min(self.order.len()) as u64,
            skipped_corrupt: 0,
            skipped_reasons: Vec::new(),
        }
    }
}

impl Iterator for TextEpoch<'_> {
    type Item = glimpse_data::Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        let &i = self.order.get(self.next)?;
        self.next += 1;
        let (key, meta) = &self.corpus.docs[i as usize];
        Some(Ok(Example {
            key: key.clone(),
            image: image::RgbImage::new(0, 0),
            meta: meta.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(count: u64) -> SynthConfig {
        SynthConfig {
            count,
            val_fraction: 0.2,
            test_fraction: 0.1,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn world_corpus_is_deterministic_and_split_by_scene() {
        let cfg = world(60);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let m = write_world_corpus(a.path(), &cfg, |_| {}).unwrap();
        write_world_corpus(b.path(), &cfg, |_| {}).unwrap();
        for f in ["train.jsonl", "val.jsonl", "test.jsonl", "manifest.json"] {
            let x = std::fs::read(a.path().join(f)).unwrap();
            assert_eq!(x, std::fs::read(b.path().join(f)).unwrap(), "{f}");
        }
        let kinds: Vec<&str> = m.kinds.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["caption", "qa", "instruction", "dialogue"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        let train = TextCorpus::open(&a.path().join("train.jsonl")).unwrap();
        let val = TextCorpus::open(&a.path().join("val.jsonl")).unwrap();
        assert!(!val.is_empty() && train.len() > val.len());
        // No scene gives documents to two splits.
        let scenes = |c: &TextCorpus| -> std::collections::BTreeSet<String> {
            c.docs
                .iter()
                .map(|(k, _)| k.split('-').next().unwrap().to_string())
                .collect()
        };
        assert!(scenes(&train).is_disjoint(&scenes(&val)));
        let dialogue = train
            .docs
            .iter()
            .find(|(_, v)| v["kind"] == "dialogue")
            .unwrap();
        let text = dialogue.1["text"].as_str().unwrap();
        assert!(text.starts_with("USER: ") && text.matches("ASSISTANT: ").count() >= 2);
    }

    #[test]
    fn epochs_permute_reproducibly_and_resume_at_a_position() {
        let dir = tempfile::tempdir().unwrap();
        write_world_corpus(dir.path(), &world(20), |_| {}).unwrap();
        let c = TextCorpus::open(&dir.path().join("train.jsonl")).unwrap();
        let keys = |e: TextEpoch| -> Vec<String> { e.map(|x| x.unwrap().key).collect() };
        let full = keys(c.epoch(3, 1, 0, true));
        assert_eq!(full.len(), c.len());
        assert_eq!(full, keys(c.epoch(3, 1, 0, true)));
        assert_ne!(full, keys(c.epoch(3, 2, 0, true)));
        assert_eq!(full[5..], keys(c.epoch(3, 1, 5, true))[..]);
        let mut sorted = full.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), c.len());
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "{\"text\": \"a red circle\"}\n{\"txt\": \"x\"}\n").unwrap();
        let e = TextCorpus::open(&p).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2") && e.contains("text"), "{e}");
        std::fs::write(&p, "{\"text\": \"a\"}\nnot json\n").unwrap();
        let e = TextCorpus::open(&p).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2") && e.contains("not JSON"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        let e = TextCorpus::open(&p).unwrap_err().to_string();
        assert!(e.contains("no document"), "{e}");
        let e = TextCorpus::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory") && e.contains("JSONL"), "{e}");
    }
}
