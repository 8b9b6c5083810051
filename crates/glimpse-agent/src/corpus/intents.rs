//! The intents the corpus writes requests for: each a plan family, the clauses that
//! phrase it ([`super::phrases`]: one clause per step, with the kind of image
//! reference the step needs) and the plan it builds from drawn slots.
//!
//! Held out for the test split: every intent marked `held_out` (plan shapes composed
//! of clauses and steps that training has in other shapes, never seen whole), the
//! held-out parts of the request grammar (see [`super::phrases`]), and for fan-outs the
//! image count `held_out_n` (training never sees it; the test split asks for it in
//! held-out phrasings only).

use std::collections::BTreeMap;

use glimpse_data::rng::SplitMix64 as Rng;

use super::phrases::{render, Clause, Fill, Hold, Phrasing, Ref};
use crate::plan::{ArgValue, Plan, PlanTask, Reference};
use crate::tasks::ArgName;

/// The slots a template and its plan are filled from.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    /// Images that come with the request.
    pub images: usize,
    /// An object phrase with its article: "a small red circle".
    pub obj: String,
    pub obj2: String,
    /// A question about one image, ending in "?".
    pub q: String,
    /// Two or three labels.
    pub labels: Vec<String>,
    /// What a text-generation task writes: "a poem about a red circle".
    pub topic: String,
    /// The image a question is about, from 1.
    pub k: usize,
}

/// A plan family.
pub struct Intent {
    pub name: &'static str,
    /// Images the request comes with: fixed, or the range of a fan-out.
    pub images: (usize, usize),
    /// The whole intent (its plan shape) is held out for the test split.
    pub held_out: bool,
    /// A fan-out's image count held out for the test split.
    pub held_out_n: Option<usize>,
    /// The clauses that phrase the plan, in step order, with what each names.
    pub parts: &'static [(Clause, Ref)],
    pub build: fn(&Slots) -> Plan,
}

const ORDINALS: [&str; 5] = ["zeroth", "first", "second", "third", "fourth"];
const COUNT_WORDS: [&str; 5] = ["no", "one", "two", "three", "four"];

impl Intent {
    /// A request for `s` in a phrasing that `hold` allows, and the phrasing's name.
    pub fn request(&self, rng: &mut Rng, s: &Slots, hold: Hold) -> (String, String) {
        let labels = match s.labels.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        let p = Phrasing::draw(rng, self.parts, hold);
        let fill = Fill {
            obj: &s.obj,
            q: &s.q,
            labels: &labels,
            topic: &s.topic,
            k: ORDINALS[s.k.min(4)],
            d: s.k.to_string(),
            n: COUNT_WORDS[s.images.min(4)],
        };
        // A second object phrase goes to the second clause (retrieve one thing, match
        // another).
        let objs = [s.obj.as_str(), s.obj2.as_str()];
        let objs: &[&str] = if self.name == "retrieve-match" {
            &objs
        } else {
            &objs[..1]
        };
        (render(self.parts, &p, &fill, objs), p.signature())
    }
}

fn task(id: usize, name: &str, dep: &[usize], args: &[(ArgName, ArgValue)]) -> PlanTask {
    PlanTask {
        id,
        task: name.to_string(),
        dep: dep.to_vec(),
        args: args.iter().cloned().collect::<BTreeMap<_, _>>(),
    }
}

fn img(k: usize) -> ArgValue {
    ArgValue::Ref(Reference::Image(k))
}
fn res(n: usize) -> ArgValue {
    ArgValue::Ref(Reference::Resource(n))
}
fn text(s: &str) -> ArgValue {
    ArgValue::Text(s.to_string())
}
/// An object phrase without its article, as a text argument ("red circle").
fn bare(obj: &str) -> String {
    obj.strip_prefix("a ")
        .or_else(|| obj.strip_prefix("an "))
        .unwrap_or(obj)
        .to_string()
}

use ArgName::{Image, Labels, Question, Text};

const CAPTION: &str = "image-to-text";
const VQA: &str = "visual-question-answering";
const CLASSIFY: &str = "zero-shot-image-classification";
const ITM: &str = "image-text-matching";
const T2I: &str = "text-to-image-retrieval";
const I2I: &str = "image-to-image-retrieval";
const TEXTGEN: &str = "text-generation";

fn one(t: PlanTask) -> Plan {
    Plan { tasks: vec![t] }
}

/// Every intent, in a fixed order (the corpus draws by index).
pub fn intents() -> Vec<Intent> {
    vec![
        Intent {
            name: "caption",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Caption, Ref::Single)],
            build: |_| one(task(0, CAPTION, &[], &[(Image, img(1))])),
        },
        Intent {
            name: "vqa",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Ask, Ref::Single)],
            build: |s| {
                one(task(
                    0,
                    VQA,
                    &[],
                    &[(Image, img(1)), (Question, text(&s.q))],
                ))
            },
        },
        Intent {
            name: "vqa-kth",
            images: (2, 4),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Ask, Ref::Kth)],
            build: |s| {
                one(task(
                    0,
                    VQA,
                    &[],
                    &[(Image, img(s.k)), (Question, text(&s.q))],
                ))
            },
        },
        Intent {
            name: "classify",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Classify, Ref::Single)],
            build: |s| {
                one(task(
                    0,
                    CLASSIFY,
                    &[],
                    &[(Image, img(1)), (Labels, ArgValue::List(s.labels.clone()))],
                ))
            },
        },
        Intent {
            name: "match",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Match, Ref::Single)],
            build: |s| one(task(0, ITM, &[], &[(Image, img(1)), (Text, text(&s.obj))])),
        },
        Intent {
            name: "retrieve-text",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Find, Ref::None)],
            build: |s| one(task(0, T2I, &[], &[(Text, text(&s.obj))])),
        },
        Intent {
            name: "retrieve-image",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Similar, Ref::Single)],
            build: |_| one(task(0, I2I, &[], &[(Image, img(1))])),
        },
        Intent {
            name: "generate",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Write, Ref::None)],
            build: |s| one(task(0, TEXTGEN, &[], &[(Text, text(&s.topic))])),
        },
        Intent {
            name: "retrieve-caption",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Find, Ref::None), (Clause::Caption, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, T2I, &[], &[(Text, text(&s.obj))]),
                    task(1, CAPTION, &[0], &[(Image, res(0))]),
                ],
            },
        },
        Intent {
            name: "similar-caption",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Similar, Ref::Single),
                (Clause::Caption, Ref::Found),
            ],
            build: |_| Plan {
                tasks: vec![
                    task(0, I2I, &[], &[(Image, img(1))]),
                    task(1, CAPTION, &[0], &[(Image, res(0))]),
                ],
            },
        },
        Intent {
            name: "retrieve-classify",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Find, Ref::None), (Clause::Classify, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, T2I, &[], &[(Text, text(&s.obj))]),
                    task(
                        1,
                        CLASSIFY,
                        &[0],
                        &[(Image, res(0)), (Labels, ArgValue::List(s.labels.clone()))],
                    ),
                ],
            },
        },
        Intent {
            name: "similar-match",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Similar, Ref::Single), (Clause::Match, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, I2I, &[], &[(Image, img(1))]),
                    task(1, ITM, &[0], &[(Image, res(0)), (Text, text(&s.obj))]),
                ],
            },
        },
        Intent {
            name: "caption-generate",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Caption, Ref::Single),
                (Clause::WriteFrom, Ref::Written),
            ],
            build: |_| Plan {
                tasks: vec![
                    task(0, CAPTION, &[], &[(Image, img(1))]),
                    task(1, TEXTGEN, &[0], &[(Text, res(0))]),
                ],
            },
        },
        Intent {
            name: "caption-each",
            images: (2, 4),
            held_out: false,
            held_out_n: Some(3),
            parts: &[(Clause::Caption, Ref::Each)],
            build: |s| Plan {
                tasks: (0..s.images)
                    .map(|i| task(i, CAPTION, &[], &[(Image, img(i + 1))]))
                    .collect(),
            },
        },
        Intent {
            name: "match-each",
            images: (2, 4),
            held_out: false,
            held_out_n: Some(3),
            parts: &[(Clause::MatchWhich, Ref::None)],
            build: |s| Plan {
                tasks: (0..s.images)
                    .map(|i| task(i, ITM, &[], &[(Image, img(i + 1)), (Text, text(&s.obj))]))
                    .collect(),
            },
        },
        Intent {
            name: "classify-each",
            images: (2, 4),
            held_out: false,
            held_out_n: Some(3),
            parts: &[(Clause::Classify, Ref::Each)],
            build: |s| Plan {
                tasks: (0..s.images)
                    .map(|i| {
                        task(
                            i,
                            CLASSIFY,
                            &[],
                            &[
                                (Image, img(i + 1)),
                                (Labels, ArgValue::List(s.labels.clone())),
                            ],
                        )
                    })
                    .collect(),
            },
        },
        Intent {
            name: "ask-each",
            images: (2, 4),
            held_out: false,
            held_out_n: Some(3),
            parts: &[(Clause::Ask, Ref::Each)],
            build: |s| Plan {
                tasks: (0..s.images)
                    .map(|i| task(i, VQA, &[], &[(Image, img(i + 1)), (Question, text(&s.q))]))
                    .collect(),
            },
        },
        Intent {
            name: "which-has-what-else",
            images: (2, 2),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::WhichElse, Ref::None)],
            build: |s| Plan {
                tasks: (0..2)
                    .map(|i| task(i, ITM, &[], &[(Image, img(i + 1)), (Text, text(&s.obj))]))
                    .chain((0..2).map(|i| task(i + 2, CAPTION, &[], &[(Image, img(i + 1))])))
                    .collect(),
            },
        },
        // Trained compositions that lend the held-out shapes their parts: a result
        // passed on to matching and classification, a three-step chain, and two
        // independent questions about one image.
        Intent {
            name: "retrieve-match",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            parts: &[(Clause::Find, Ref::None), (Clause::Match, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, T2I, &[], &[(Text, text(&s.obj))]),
                    task(1, ITM, &[0], &[(Image, res(0)), (Text, text(&s.obj2))]),
                ],
            },
        },
        Intent {
            name: "similar-classify",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Similar, Ref::Single),
                (Clause::Classify, Ref::Found),
            ],
            build: |s| Plan {
                tasks: vec![
                    task(0, I2I, &[], &[(Image, img(1))]),
                    task(
                        1,
                        CLASSIFY,
                        &[0],
                        &[(Image, res(0)), (Labels, ArgValue::List(s.labels.clone()))],
                    ),
                ],
            },
        },
        Intent {
            name: "similar-caption-generate",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Similar, Ref::Single),
                (Clause::Caption, Ref::Found),
                (Clause::WriteFrom, Ref::Written),
            ],
            build: |_| Plan {
                tasks: vec![
                    task(0, I2I, &[], &[(Image, img(1))]),
                    task(1, CAPTION, &[0], &[(Image, res(0))]),
                    task(2, TEXTGEN, &[1], &[(Text, res(1))]),
                ],
            },
        },
        Intent {
            name: "caption-and-match",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Caption, Ref::Single),
                (Clause::Match, Ref::SingleAgain),
            ],
            build: |s| Plan {
                tasks: vec![
                    task(0, CAPTION, &[], &[(Image, img(1))]),
                    task(1, ITM, &[], &[(Image, img(1)), (Text, text(&s.obj))]),
                ],
            },
        },
        Intent {
            name: "classify-and-ask",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            parts: &[
                (Clause::Classify, Ref::Single),
                (Clause::Ask, Ref::SingleAgain),
            ],
            build: |s| Plan {
                tasks: vec![
                    task(
                        0,
                        CLASSIFY,
                        &[],
                        &[(Image, img(1)), (Labels, ArgValue::List(s.labels.clone()))],
                    ),
                    task(1, VQA, &[], &[(Image, img(1)), (Question, text(&s.q))]),
                ],
            },
        },
        // Held-out shapes: each composes parts that training has.
        Intent {
            name: "retrieve-ask",
            images: (0, 0),
            held_out: true,
            held_out_n: None,
            parts: &[(Clause::Find, Ref::None), (Clause::Ask, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, T2I, &[], &[(Text, text(&s.obj))]),
                    task(1, VQA, &[0], &[(Image, res(0)), (Question, text(&s.q))]),
                ],
            },
        },
        Intent {
            name: "caption-and-ask",
            images: (1, 1),
            held_out: true,
            held_out_n: None,
            parts: &[
                (Clause::Caption, Ref::Single),
                (Clause::Ask, Ref::SingleAgain),
            ],
            build: |s| Plan {
                tasks: vec![
                    task(0, CAPTION, &[], &[(Image, img(1))]),
                    task(1, VQA, &[], &[(Image, img(1)), (Question, text(&s.q))]),
                ],
            },
        },
        Intent {
            name: "retrieve-caption-generate",
            images: (0, 0),
            held_out: true,
            held_out_n: None,
            parts: &[
                (Clause::Find, Ref::None),
                (Clause::Caption, Ref::Found),
                (Clause::WriteFrom, Ref::Written),
            ],
            build: |s| Plan {
                tasks: vec![
                    task(0, T2I, &[], &[(Text, text(&s.obj))]),
                    task(1, CAPTION, &[0], &[(Image, res(0))]),
                    task(2, TEXTGEN, &[1], &[(Text, res(1))]),
                ],
            },
        },
        Intent {
            name: "similar-ask",
            images: (1, 1),
            held_out: true,
            held_out_n: None,
            parts: &[(Clause::Similar, Ref::Single), (Clause::Ask, Ref::Found)],
            build: |s| Plan {
                tasks: vec![
                    task(0, I2I, &[], &[(Image, img(1))]),
                    task(1, VQA, &[0], &[(Image, res(0)), (Question, text(&s.q))]),
                ],
            },
        },
    ]
}

/// The bare object phrase (without article), for callers that need it.
pub fn object_words(obj: &str) -> String {
    bare(obj)
}
