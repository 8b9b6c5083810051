//! The intents the corpus writes requests for: each a plan family with its phrasings
//! (templates) and the plan it builds from drawn slots. Templates hold `{obj}` (an
//! object phrase such as "a small red circle"), `{obj2}`, `{q}` (a question about an
//! image), `{labels}` (labels joined by "or"), `{topic}` (what to write about), `{k}`
//! (an image's ordinal, "second") and `{n}` (the number of images as a word).
//!
//! Held out for the test split: the last template of every intent, every intent marked
//! `held_out` (plan shapes composed of parts training has, never seen whole), and for
//! fan-outs the image count `held_out_n` (training never sees it; the test split asks
//! for it in held-out phrasings only).

use std::collections::BTreeMap;

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
    pub templates: &'static [&'static str],
    pub build: fn(&Slots) -> Plan,
}

const ORDINALS: [&str; 5] = ["zeroth", "first", "second", "third", "fourth"];
const COUNT_WORDS: [&str; 5] = ["no", "one", "two", "three", "four"];

impl Intent {
    /// The request `template` writes for `s`.
    pub fn render(&self, template: usize, s: &Slots) -> String {
        let labels = match s.labels.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        self.templates[template]
            .replace("{obj}", &s.obj)
            .replace("{obj2}", &s.obj2)
            .replace("{q}", &s.q)
            .replace("{labels}", &labels)
            .replace("{topic}", &s.topic)
            .replace("{k}", ORDINALS[s.k.min(4)])
            .replace("{n}", COUNT_WORDS[s.images.min(4)])
    }

    /// Whether `template` is held out (the last of each intent).
    pub fn template_held_out(&self, template: usize) -> bool {
        template + 1 == self.templates.len()
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
            templates: &[
                "describe this image.",
                "what is in this picture?",
                "write a caption for this image.",
                "can you tell me what this image shows?",
                "give me a short description of the picture.",
            ],
            build: |_| one(task(0, CAPTION, &[], &[(Image, img(1))])),
        },
        Intent {
            name: "vqa",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            templates: &[
                "{q}",
                "look at this picture: {q}",
                "about this image, {q}",
                "answer from the image: {q}",
                "here is a photo. {q}",
            ],
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
            templates: &[
                "in the {k} image, {q}",
                "look at the {k} picture: {q}",
                "about image number {k}: {q}",
                "for the {k} of these images, {q}",
            ],
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
            templates: &[
                "is this {labels}?",
                "classify this image as {labels}.",
                "which fits this picture best: {labels}?",
                "does the image show {labels}?",
            ],
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
            templates: &[
                "does this image show {obj}?",
                "is there {obj} in this picture?",
                "how well does \"{obj}\" describe this image?",
                "check whether this photo contains {obj}.",
            ],
            build: |s| one(task(0, ITM, &[], &[(Image, img(1)), (Text, text(&s.obj))])),
        },
        Intent {
            name: "retrieve-text",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            templates: &[
                "find pictures of {obj}.",
                "search the collection for {obj}.",
                "show me images with {obj}.",
                "i am looking for photos of {obj}.",
            ],
            build: |s| one(task(0, T2I, &[], &[(Text, text(&s.obj))])),
        },
        Intent {
            name: "retrieve-image",
            images: (1, 1),
            held_out: false,
            held_out_n: None,
            templates: &[
                "find images like this one.",
                "search for pictures similar to this image.",
                "show me more photos that look like this.",
                "which images in the collection resemble this one?",
            ],
            build: |_| one(task(0, I2I, &[], &[(Image, img(1))])),
        },
        Intent {
            name: "generate",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            templates: &[
                "write {topic}.",
                "please compose {topic}.",
                "can you write me {topic}?",
                "i would like {topic}.",
            ],
            build: |s| one(task(0, TEXTGEN, &[], &[(Text, text(&s.topic))])),
        },
        Intent {
            name: "retrieve-caption",
            images: (0, 0),
            held_out: false,
            held_out_n: None,
            templates: &[
                "find a picture of {obj} and describe it.",
                "search for {obj}, then tell me what the image shows.",
                "show me an image with {obj} and write a caption for it.",
                "look for photos of {obj} and describe what you find.",
            ],
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
            templates: &[
                "find images like this one and say what they share.",
                "search for similar pictures and describe them.",
                "show me photos that look like this and caption them.",
                "what do the images most like this one show?",
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
            templates: &[
                "find a picture of {obj} and tell me if it is {labels}.",
                "search for {obj}, then classify the result as {labels}.",
                "look for {obj} and decide whether the image shows {labels}.",
                "get me an image of {obj}; is it {labels}?",
            ],
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
            templates: &[
                "find images like this one and check whether they show {obj}.",
                "search for similar pictures; do they contain {obj}?",
                "look for photos resembling this and score them against {obj}.",
                "do images like this one show {obj}?",
            ],
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
            templates: &[
                "describe this image and write a poem about it.",
                "caption this picture, then turn the caption into a story.",
                "tell me what this photo shows and continue it as a story.",
                "write a caption for this image and expand it into a paragraph.",
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
            templates: &[
                "describe each of these {n} images.",
                "write a caption for every picture.",
                "what does each of the {n} photos show?",
                "tell me what is in each image.",
            ],
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
            templates: &[
                "which of these images shows {obj}?",
                "in which of the {n} pictures is there {obj}?",
                "check each photo for {obj}.",
                "which picture has {obj} in it?",
                "tell me which of these {n} images contains {obj}.",
            ],
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
            templates: &[
                "is each of these {labels}?",
                "classify every image as {labels}.",
                "for each of the {n} pictures, decide: {labels}?",
                "label each photo as {labels}.",
            ],
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
            templates: &[
                "for each image, {q}",
                "in every one of these {n} pictures, {q}",
                "answer for each photo: {q}",
                "look at each of the {n} images: {q}",
            ],
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
            templates: &[
                "which of these images has {obj}, and what else is in it?",
                "find the picture with {obj} and tell me what else it shows.",
                "one of these photos contains {obj}; which one, and what is next to it?",
                "which image shows {obj}? describe the rest of that image too.",
            ],
            build: |s| Plan {
                tasks: (0..2)
                    .map(|i| task(i, ITM, &[], &[(Image, img(i + 1)), (Text, text(&s.obj))]))
                    .chain((0..2).map(|i| task(i + 2, CAPTION, &[], &[(Image, img(i + 1))])))
                    .collect(),
            },
        },
        // Held-out shapes: each composes parts that training has.
        Intent {
            name: "retrieve-ask",
            images: (0, 0),
            held_out: true,
            held_out_n: None,
            templates: &[
                "find a picture of {obj} and answer: {q}",
                "search for {obj}, then tell me: {q}",
            ],
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
            templates: &[
                "describe this image and also answer: {q}",
                "write a caption for this picture. then, {q}",
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
            templates: &[
                "find a picture of {obj}, describe it and write a poem about it.",
                "search for {obj}, caption the image and turn the caption into a story.",
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
            templates: &[
                "find images like this one and answer for them: {q}",
                "search for similar pictures, then {q}",
            ],
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
