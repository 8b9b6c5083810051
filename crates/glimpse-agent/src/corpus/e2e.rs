//! The end-to-end evaluation set: held-out multi-step requests about real rendered
//! images of the synthetic world, with the gold plan and what a right answer says.
//!
//! One JSON line per request (`agent-test.jsonl`), images under `images/` next to it:
//! `{"key", "request", "images": [paths relative to the file's directory], "plan":
//! <gold plan>, "expect": {"all": [...], "none": [...]}}`. An answer is right when it
//! contains every `all` string and no `none` string, case-insensitively. Expectations
//! come from the scene records, written as the answer writer (`crate::answer`) states
//! them so that a number or a word elsewhere in an answer cannot meet them: `image K
//! matches "a red circle" best`, `match "a red circle"? yes`, a question's answer right
//! after its quoted question (`" 2 (visual-question-answering`), caption words. Requests use only held-out phrasings or plan shapes; scenes come from the
//! world's test split (seed, index), which no bundled model trained on.

use std::path::Path;

use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_synth::{sample, SampleJson, Split, SynthConfig};
use serde::Serialize;

use super::intents::{intents, Intent, Slots};
use super::phrases::Hold;
use super::{with_article, SALT};
use crate::plan::Plan;
use crate::{Error, Result};

/// What a right answer contains and does not contain.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Expect {
    pub all: Vec<String>,
    pub none: Vec<String>,
}

/// One end-to-end request.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCase {
    pub key: String,
    pub request: String,
    pub images: Vec<String>,
    pub plan: serde_json::Value,
    pub expect: Expect,
}

/// What [`write`] wrote.
pub struct E2eReport {
    pub requests: usize,
    pub images: usize,
}

/// Draws world scenes from the test split of the world with `seed`.
struct Scenes {
    cfg: SynthConfig,
    next: u64,
}

impl Scenes {
    fn new(seed: u64) -> Self {
        let cfg = SynthConfig {
            seed,
            count: u64::MAX / 2,
            ..SynthConfig::default()
        };
        Self { cfg, next: 0 }
    }

    /// The next test-split scene that `keep` accepts.
    fn draw(&mut self, keep: impl Fn(&SampleJson) -> bool) -> glimpse_synth::Sample {
        loop {
            let i = self.next;
            self.next += 1;
            if self.cfg.split_of(i) != Split::Test {
                continue;
            }
            let s = sample(&self.cfg, i);
            if keep(&s.record) {
                return s;
            }
        }
    }
}

fn has(r: &SampleJson, color: &str, shape: &str) -> bool {
    r.objects
        .iter()
        .any(|o| o.color == color && o.shape == shape)
}

/// A question of the scene's own QA pairs whose answer is a colour, shape, digit or
/// yes/no.
/// How the answer writer states a visual question's answer `a`: after the quoted
/// question, before the task and model (`"q" a (visual-question-answering, model)`), so
/// the expectation cannot be met by a score or an image number elsewhere in the answer.
fn vqa_answer(a: &str) -> String {
    format!("\" {a} (visual-question-answering")
}

fn pick_qa(r: &SampleJson, rng: &mut Rng) -> (String, String) {
    let qa = &r.qa[rng.below_from_high_bits(r.qa.len())];
    (qa.question.clone(), qa.answer.clone())
}

fn find<'a>(all: &'a [Intent], name: &str) -> &'a Intent {
    all.iter().find(|i| i.name == name).expect("a known intent")
}

/// Case `index`: its request, scenes, plan and expectations.
fn case(
    seed: u64,
    index: usize,
    scenes: &mut Scenes,
) -> (String, Vec<glimpse_synth::Sample>, Plan, Expect) {
    let all = intents();
    let mut rng = Rng::salted(SALT ^ 0xe2e, seed, index as u64, 0);
    let kinds = [
        "caption",
        "vqa",
        "vqa-kth",
        "match",
        "match-each",
        "which-has-what-else",
        "caption-and-ask",
        "ask-each",
    ];
    let kind = kinds[index % kinds.len()];
    let it = find(&all, kind);
    let mut expect = Expect::default();
    let mut slots = Slots::default();
    let images: Vec<glimpse_synth::Sample>;
    match kind {
        "caption" => {
            let s = scenes.draw(|_| true);
            let o = &s.record.objects[0];
            expect.all = vec![o.color.clone(), o.shape.clone()];
            images = vec![s];
        }
        "vqa" | "caption-and-ask" => {
            let s = scenes.draw(|_| true);
            let (q, a) = pick_qa(&s.record, &mut rng);
            slots.q = q;
            expect.all = vec![vqa_answer(&a)];
            if kind == "caption-and-ask" {
                expect.all.push(s.record.objects[0].shape.clone());
            }
            images = vec![s];
        }
        "vqa-kth" => {
            let n = 2 + rng.below_from_high_bits(2);
            images = (0..n).map(|_| scenes.draw(|_| true)).collect();
            slots.k = 1 + rng.below_from_high_bits(n);
            let (q, a) = pick_qa(&images[slots.k - 1].record, &mut rng);
            slots.q = q;
            expect.all = vec![format!("image {}: \"", slots.k), vqa_answer(&a)];
        }
        "match" => {
            let s = scenes.draw(|_| true);
            let present = rng.unit() < 0.5;
            let (color, shape) = if present {
                let o = &s.record.objects[rng.below_from_high_bits(s.record.objects.len())];
                (o.color.clone(), o.shape.clone())
            } else {
                loop {
                    let c = glimpse_synth::COLORS[rng.below_from_high_bits(10)].0;
                    let sh = glimpse_synth::SHAPES[rng.below_from_high_bits(7)].0;
                    if !s.record.objects.iter().any(|o| o.shape == sh) {
                        break (c.to_string(), sh.to_string());
                    }
                }
            };
            slots.obj = with_article(&format!("{color} {shape}"));
            let verdict = if present { "yes" } else { "no" };
            expect.all = vec![format!("match \"{}\"? {verdict}", slots.obj)];
            images = vec![s];
        }
        "match-each" | "which-has-what-else" => {
            let n = if kind == "match-each" {
                2 + rng.below_from_high_bits(3)
            } else {
                2
            };
            let target = rng.below_from_high_bits(n);
            let needs_two = kind == "which-has-what-else";
            let t = scenes
                .draw(|r| !needs_two || r.objects.iter().any(|o| o.shape != r.objects[0].shape));
            let o = t.record.objects[0].clone();
            let mut imgs = Vec::new();
            for i in 0..n {
                if i == target {
                    imgs.push(t.clone());
                } else {
                    imgs.push(scenes.draw(|r| !has(r, &o.color, &o.shape)));
                }
            }
            slots.obj = with_article(&format!("{} {}", o.color, o.shape));
            expect.all = vec![format!(
                "image {} matches \"{}\" best",
                target + 1,
                slots.obj
            )];
            if needs_two {
                let other = t
                    .record
                    .objects
                    .iter()
                    .find(|x| x.shape != o.shape)
                    .expect("drawn so");
                expect.all.push(other.shape.clone());
            }
            images = imgs;
        }
        _ => {
            // ask-each: how many objects in each image.
            let n = 2 + rng.below_from_high_bits(3);
            images = (0..n).map(|_| scenes.draw(|_| true)).collect();
            slots.q = "how many objects are there?".into();
            let mut counts: Vec<String> = images
                .iter()
                .map(|s| vqa_answer(&s.record.count.to_string()))
                .collect();
            counts.sort();
            counts.dedup();
            expect.all = counts;
        }
    }
    slots.images = images.len();
    // A held-out shape in any phrasing, a trained one in a held-out phrasing.
    let hold = if it.held_out { Hold::Any } else { Hold::Test };
    let (request, _) = it.request(&mut rng, &slots, hold);
    let plan = (it.build)(&slots);
    (request, images, plan, expect)
}

/// Writes `OUT/agent-test.jsonl` and its images under `OUT/images/`.
pub fn write(out: &Path, seed: u64, count: usize) -> Result<E2eReport> {
    let img_dir = out.join("images");
    std::fs::create_dir_all(&img_dir)
        .map_err(|e| Error::Io(format!("{}: {e}", img_dir.display())))?;
    let mut scenes = Scenes::new(seed);
    let mut lines = Vec::new();
    let mut written = std::collections::BTreeSet::new();
    for i in 0..count {
        let (request, samples, plan, expect) = case(seed, i, &mut scenes);
        let mut paths = Vec::new();
        for s in &samples {
            let rel = format!("images/{}.png", s.record.key);
            if written.insert(rel.clone()) {
                let (png, _) =
                    glimpse_synth::encode_sample(s).map_err(|e| Error::Io(e.to_string()))?;
                glimpse_data::atomic::write(&out.join(&rel), &png)
                    .map_err(|(p, e)| Error::Io(format!("{}: {e}", p.display())))?;
            }
            paths.push(rel);
        }
        let case = AgentCase {
            key: format!("agent-{i:04}"),
            request,
            images: paths,
            plan: serde_json::Value::Null,
            expect,
        };
        // The plan as its canonical text (keys in plan order), not re-sorted.
        let line = serde_json::to_string(&case)
            .expect("a case serialises")
            .replacen("\"plan\":null", &format!("\"plan\":{}", plan.to_json()), 1);
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
    }
    glimpse_data::atomic::write(&out.join("agent-test.jsonl"), &lines)
        .map_err(|(p, e)| Error::Io(format!("{}: {e}", p.display())))?;
    Ok(E2eReport {
        requests: count,
        images: written.len(),
    })
}
