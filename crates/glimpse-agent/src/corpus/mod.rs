//! The planner's corpus: requests over the synthetic world's vocabulary (colours,
//! shapes, sizes, positions of `glimpse-synth`) paired with the plans that answer them,
//! from the intents of [`intents`] (one to four tasks; single tasks of every built-in
//! type, chains such as retrieve → caption, fan-outs over several images, requests
//! about several images). Deterministic from a seed.
//!
//! Splits: `train` and `val` draw only phrasings and plan shapes that training may see;
//! `test` draws only held-out ones: four in ten of its requests have a plan shape
//! training never sees (intents composed of trained clauses and steps), the rest a
//! trained shape (fan-outs over a held-out image count among them) phrased with at
//! least one held-out part of the request grammar ([`phrases`]: a frame, connector,
//! prefix or suffix that training never uses, made of words it does use). So the test
//! split measures generalisation to new phrasings and new shapes ([`Item::shape`]
//! names a shape; the tests check that no held-out part or shape occurs in training).
//!
//! Written by `glimpse data plans` as `{train,val,test}.jsonl` documents
//! (`{"key","kind","prompt","text"}`, the format of `glimpse-train`'s `lm` recipe:
//! prompt = [`prompt_of`] the request, text = the canonical plan), the planner's
//! tokenizer ([`crate::plan_tokenizer`]) and the end-to-end set ([`e2e`]).

pub mod e2e;
pub mod intents;
pub mod phrases;

use std::path::Path;

use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_synth::{COLORS, POSITIONS, SHAPES, SIZES};
use serde::{Deserialize, Serialize};

use crate::plan::{ArgValue, Plan};
use crate::{Error, Result};
pub use intents::{intents, Intent, Slots};
use phrases::Hold;

/// Salt of the corpus's draws, apart from the world's streams.
const SALT: u64 = 0x9a77_e2c0_1d5e_0031;

/// What the planner reads before the plan: the request's images by the names a plan
/// gives them (`<image>-1 <image>-2`, or `none`), then the request. Listing the names
/// lets a fan-out copy them one by one and stop after the last, whatever their number.
pub fn prompt_of(request: &str, images: usize) -> String {
    let names: Vec<String> = (1..=images).map(|k| format!("<image>-{k}")).collect();
    let names = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" ")
    };
    format!("images: {names}. request: {} plan: ", request.trim())
}

/// A request with its gold plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: String,
    /// The intent's name.
    pub intent: String,
    /// `intent#phrasing`: the intent and the parts of the request grammar it used.
    pub template: String,
    pub request: String,
    pub images: usize,
    pub plan: Plan,
}

impl Item {
    /// The plan shape: the canonical plan with literal texts and labels blanked.
    pub fn shape(&self) -> String {
        shape_of(&self.plan)
    }

    pub fn document(&self) -> Document {
        Document {
            key: self.key.clone(),
            kind: self.intent.clone(),
            prompt: Some(prompt_of(&self.request, self.images)),
            text: self.plan.to_json(),
            request: Some(self.request.clone()),
            images: Some(self.images),
        }
    }
}

/// The shape of `plan`: tasks, dependencies, argument names and references, with
/// literal values replaced by `_`.
pub fn shape_of(plan: &Plan) -> String {
    let mut p = plan.clone();
    for t in &mut p.tasks {
        for v in t.args.values_mut() {
            match v {
                ArgValue::Text(s) => *s = "_".into(),
                ArgValue::List(l) => *l = vec!["_".into()],
                ArgValue::Ref(_) => {}
            }
        }
    }
    p.to_json()
}

/// One line of a corpus file (`glimpse-train`'s corpus format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub key: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub text: String,
    /// The request and its image count, for evaluating planners on the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
}

/// The three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSplit {
    Train,
    Val,
    Test,
}

impl PlanSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

fn with_article(phrase: &str) -> String {
    let vowel = phrase.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {phrase}", if vowel { "an" } else { "a" })
}

fn draw_object(rng: &mut Rng) -> String {
    let color = COLORS[rng.below_from_high_bits(COLORS.len())].0;
    let shape = SHAPES[rng.below_from_high_bits(SHAPES.len())].0;
    if rng.unit() < 0.3 {
        let size = SIZES[rng.below_from_high_bits(SIZES.len())].0;
        with_article(&format!("{size} {color} {shape}"))
    } else {
        with_article(&format!("{color} {shape}"))
    }
}

/// A question in the forms the world's VQA pairs take.
fn draw_question(rng: &mut Rng) -> String {
    let shape = SHAPES[rng.below_from_high_bits(SHAPES.len())];
    let color = COLORS[rng.below_from_high_bits(COLORS.len())].0;
    let pos = POSITIONS[rng.below_from_high_bits(POSITIONS.len())];
    match rng.below_from_high_bits(8) {
        0 => format!("what color is the {}?", shape.0),
        1 => format!("how many {} are there?", shape.1),
        2 => "how many objects are there?".into(),
        3 => format!("what shape is in the {pos}?"),
        4 => format!("what color is the {} in the {pos}?", shape.0),
        5 => format!("is there a {}?", shape.0),
        6 => "what color is the background?".into(),
        _ => format!("what size is the {color} {}?", shape.0),
    }
}

fn draw_labels(rng: &mut Rng) -> Vec<String> {
    let n = 2 + rng.below_from_high_bits(2);
    let with_color = rng.unit() < 0.5;
    let mut out: Vec<String> = Vec::new();
    while out.len() < n {
        let shape = SHAPES[rng.below_from_high_bits(SHAPES.len())].0;
        let l = if with_color {
            format!(
                "{} {shape}",
                COLORS[rng.below_from_high_bits(COLORS.len())].0
            )
        } else {
            shape.to_string()
        };
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

const TOPICS: [&str; 4] = [
    "a poem about",
    "a short story about",
    "a haiku about",
    "a riddle about",
];

/// Random slots for `intent` with `images` images.
pub fn draw_slots(rng: &mut Rng, images: usize) -> Slots {
    let obj = draw_object(rng);
    let mut obj2 = draw_object(rng);
    while obj2 == obj {
        obj2 = draw_object(rng);
    }
    let topic_obj = draw_object(rng);
    Slots {
        images,
        obj,
        obj2,
        q: draw_question(rng),
        labels: draw_labels(rng),
        topic: format!(
            "{} {topic_obj}",
            TOPICS[rng.below_from_high_bits(TOPICS.len())]
        ),
        k: 1 + rng.below_from_high_bits(images.max(1)),
    }
}

/// Item `index` of `split` (train and val share one stream of non-held-out draws; val
/// takes every 20th).
pub fn item(seed: u64, split: PlanSplit, index: u64) -> Item {
    let all = intents();
    let stream = match split {
        PlanSplit::Train | PlanSplit::Val => 0,
        PlanSplit::Test => 1,
    };
    let mut rng = Rng::salted(SALT, seed, stream, index);
    let held = split == PlanSplit::Test;
    // Test: held-out shapes in any phrasing, trained shapes (held-out image counts
    // included) in held-out phrasings; train: neither.
    // Four in ten test requests have a held-out shape.
    let want_new_shape = held && rng.unit() < 0.4;
    let (ii, images) = loop {
        let ii = rng.below_from_high_bits(all.len());
        let it = &all[ii];
        if held && it.held_out != want_new_shape {
            continue;
        }
        let (lo, hi) = it.images;
        let n = lo + rng.below_from_high_bits(hi - lo + 1);
        if held || (!it.held_out && it.held_out_n != Some(n)) {
            break (ii, n);
        }
    };
    let it = &all[ii];
    let slots = draw_slots(&mut rng, images);
    let hold = match (held, it.held_out) {
        (false, _) => Hold::Train,
        (true, true) => Hold::Any,
        (true, false) => Hold::Test,
    };
    let (request, phrasing) = it.request(&mut rng, &slots, hold);
    Item {
        key: format!("{}-{index:06}", split.as_str()),
        intent: it.name.to_string(),
        template: format!("{}#{phrasing}", it.name),
        request,
        images,
        plan: (it.build)(&slots),
    }
}

/// The items of one split: `count` of them (val: the training stream's every 20th).
pub fn split_items(seed: u64, split: PlanSplit, count: u64) -> Vec<Item> {
    match split {
        PlanSplit::Test => (0..count).map(|i| item(seed, split, i)).collect(),
        PlanSplit::Train => (0..count)
            .filter(|i| i % 20 != 19)
            .map(|i| item(seed, split, i))
            .collect(),
        PlanSplit::Val => (0..count)
            .filter(|i| i % 20 == 19)
            .map(|i| {
                let mut it = item(seed, PlanSplit::Train, i);
                it.key = format!("val-{i:06}");
                it
            })
            .collect(),
    }
}

/// What `glimpse data plans` wrote (also `OUT/manifest.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PlansManifest {
    pub seed: u64,
    pub count: u64,
    /// Documents per split file.
    pub files: Vec<(String, usize)>,
    /// Distinct plan shapes in train and in test, and the test shapes training never
    /// saw (the rest are trained shapes under held-out phrasings).
    pub train_shapes: usize,
    pub test_shapes: usize,
    pub test_new_shapes: usize,
    /// End-to-end requests in `agent-test.jsonl`, and their images.
    pub agent_test: usize,
    pub agent_images: usize,
    pub tokenizer: String,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    glimpse_data::atomic::write(path, bytes)
        .map_err(|(p, e)| Error::Io(format!("{}: {e}", p.display())))
}

fn jsonl<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, &r).expect("a corpus line serialises");
        out.push(b'\n');
    }
    out
}

/// Writes `OUT/{train,val,test}.jsonl` (`count` training-stream draws, val every 20th;
/// `count / 10` test items, at least 100), the planner tokenizer under
/// `OUT/tokenizer/`, `OUT/agent-test.jsonl` with `OUT/images/*.png` (`e2e_count`
/// end-to-end requests) and `OUT/manifest.json`. Every file is written whole and
/// renamed, so a rerun gives the same bytes.
pub fn write_plans(
    out: &Path,
    seed: u64,
    count: u64,
    e2e_count: usize,
    mut progress: impl FnMut(&str),
) -> Result<PlansManifest> {
    if count < 20 {
        return Err(Error::Io(format!("--count {count}: at least 20 requests")));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::Io(format!("{}: {e}", out.display())))?;
    let test_count = (count / 10).max(100);
    let train = split_items(seed, PlanSplit::Train, count);
    let val = split_items(seed, PlanSplit::Val, count);
    let test = split_items(seed, PlanSplit::Test, test_count);
    let mut files = Vec::new();
    for (name, items) in [("train", &train), ("val", &val), ("test", &test)] {
        progress(&format!("{name}.jsonl"));
        write_file(
            &out.join(format!("{name}.jsonl")),
            &jsonl(items.iter().map(Item::document)),
        )?;
        files.push((format!("{name}.jsonl"), items.len()));
    }
    progress("tokenizer");
    let texts: Vec<String> = train
        .iter()
        .flat_map(|i| {
            let d = i.document();
            [d.prompt.unwrap_or_default(), d.text]
        })
        .collect();
    let tok_dir = out.join("tokenizer");
    crate::plan_tokenizer::write(&tok_dir, texts.iter().map(String::as_str))?;
    progress("agent-test.jsonl");
    let e2e = e2e::write(out, seed, e2e_count)?;
    let shapes = |items: &[Item]| {
        items
            .iter()
            .map(Item::shape)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (train_shapes, test_shapes) = (shapes(&train), shapes(&test));
    let manifest = PlansManifest {
        seed,
        count,
        files,
        train_shapes: train_shapes.len(),
        test_shapes: test_shapes.len(),
        test_new_shapes: test_shapes.difference(&train_shapes).count(),
        agent_test: e2e.requests,
        agent_images: e2e.images,
        tokenizer: "tokenizer/tokenizer.json".into(),
    };
    write_file(
        &out.join("manifest.json"),
        (serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n").as_bytes(),
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests;
