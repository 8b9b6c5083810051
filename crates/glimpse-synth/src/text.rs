//! Captions (paraphrases from templates), web-style corruption, and question/answer
//! pairs, all derived from the scene record.

use glimpse_data::rng::SplitMix64;

use crate::vocab::{COLORS, CORRUPTIONS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES};
use crate::world::{relations_between, Group, Scene};

/// What captions describe: groups, where single objects are, one relation for pairs.
#[derive(Debug, Clone)]
pub(crate) struct Desc {
    pub groups: Vec<Group>,
    /// Cell of the first object of each group.
    pub cells: Vec<usize>,
    /// For two single objects: "first RELATION second".
    pub relation: Option<&'static str>,
    pub bg_color: usize,
    pub bg_style: usize,
}

impl Desc {
    pub fn new(scene: &Scene, rng: &mut SplitMix64) -> Self {
        let mut cells = Vec::new();
        let mut at = 0;
        for g in &scene.groups {
            cells.push(scene.objects[at].cell);
            at += g.count;
        }
        let relation = if is_pair(&scene.groups) {
            let rels = relations_between(&scene.objects[0], &scene.objects[1]);
            Some(rels[rng.below_from_high_bits(rels.len())])
        } else {
            None
        };
        Desc {
            groups: scene.groups.clone(),
            cells,
            relation,
            bg_color: scene.bg_color,
            bg_style: scene.bg_style,
        }
    }

    fn total(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
}

fn is_pair(groups: &[Group]) -> bool {
    groups.len() == 2 && groups.iter().all(|g| g.count == 1)
}

fn is_single(groups: &[Group]) -> bool {
    groups.len() == 1 && groups[0].count == 1
}

fn article(next: &str) -> &'static str {
    if next.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a red circle", "an orange star", "two small blue squares".
fn np(g: &Group, with_size: bool) -> String {
    let mut words = Vec::new();
    if with_size {
        words.push(SIZES[g.kind.size].0);
    }
    words.push(COLORS[g.kind.color].0);
    let (one, many) = SHAPES[g.kind.shape];
    if g.count == 1 {
        words.push(one);
        format!("{} {}", article(words[0]), words.join(" "))
    } else {
        words.push(many);
        format!("{} {}", NUMBER_WORDS[g.count.min(4)], words.join(" "))
    }
}

/// "a red circle", "a red circle and a blue star", "two red circles, a blue star and
/// a green cross".
fn list(groups: &[Group], with_size: bool) -> String {
    let parts: Vec<String> = groups.iter().map(|g| np(g, with_size)).collect();
    match parts.len() {
        1 => parts[0].clone(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

fn inverse(rel: &str) -> &'static str {
    match rel {
        "left of" => "right of",
        "right of" => "left of",
        "above" => "below",
        _ => "above",
    }
}

fn rel_phrase(rel: &str) -> String {
    match rel {
        "left of" | "right of" => format!("to the {rel}"),
        _ => rel.to_string(),
    }
}

fn bg_phrase(d: &Desc) -> String {
    let c = COLORS[d.bg_color].0;
    match d.bg_style {
        0 => format!("{} {c} background", article(c)),
        1 => format!("{} {c} gradient background", article(c)),
        2 => format!("a checkered {c} background"),
        _ => format!("a speckled {c} background"),
    }
}

/// Templates usable as the training caption: they name every colour, shape and count.
const PRIMARY: [usize; 4] = [0, 1, 2, 5];

/// Caption template `t` applied to `d`. Templates 0, 1, 2, 5 apply to any description.
fn template(t: usize, d: &Desc) -> String {
    let g = &d.groups;
    let l = list(g, false);
    match t {
        0 => {
            if let (true, Some(rel)) = (is_pair(g), d.relation) {
                format!(
                    "{} {} {}",
                    np(&g[0], false),
                    rel_phrase(rel),
                    np(&g[1], false)
                )
            } else if is_single(g) {
                format!("{l} in the {}", POSITIONS[d.cells[0]])
            } else {
                l
            }
        }
        1 => format!("{} on {}", list(g, true), bg_phrase(d)),
        2 => {
            let c = COLORS[d.bg_color].0;
            format!("{l} on {} {c} background", article(c))
        }
        3 => format!("an image of {l}"),
        4 => format!("a picture showing {}", list(g, true)),
        5 => {
            let verb = if g[0].count == 1 { "is" } else { "are" };
            format!("there {verb} {l}")
        }
        6 => {
            let parts: Vec<String> = g
                .iter()
                .zip(&d.cells)
                .map(|(g, &c)| format!("{} in the {}", np(g, false), POSITIONS[c]))
                .collect();
            parts.join(" and ")
        }
        7 => match d.relation {
            Some(rel) => format!(
                "{} {} {}",
                np(&g[1], false),
                rel_phrase(inverse(rel)),
                np(&g[0], false)
            ),
            None => l,
        },
        8 => {
            if g.len() == 1 && g[0].count > 1 {
                format!(
                    "a group of {} {} {}",
                    NUMBER_WORDS[g[0].count], COLORS[g[0].kind.color].0, SHAPES[g[0].kind.shape].1
                )
            } else if d.total() == 1 {
                format!(
                    "one {} {}",
                    COLORS[g[0].kind.color].0, SHAPES[g[0].kind.shape].0
                )
            } else {
                format!("{} shapes: {l}", NUMBER_WORDS[d.total().min(4)])
            }
        }
        9 => list(g, true),
        _ => format!(
            "{} {}, all {}",
            NUMBER_WORDS[g[0].count.min(4)],
            SHAPES[g[0].kind.shape].1,
            COLORS[g[0].kind.color].0
        ),
    }
}

/// Five paraphrases and the template of the first (the training caption).
pub(crate) fn captions(d: &Desc, rng: &mut SplitMix64) -> (Vec<String>, usize) {
    let g = &d.groups;
    let others: &[usize] = if is_single(g) {
        &[3, 4, 6, 8, 9]
    } else if is_pair(g) {
        &[3, 4, 6, 7, 8, 9]
    } else if g.len() == 1 {
        &[3, 4, 8, 9, 10]
    } else {
        &[3, 4, 8, 9]
    };
    let first = PRIMARY[rng.below_from_high_bits(PRIMARY.len())];
    let mut pool: Vec<usize> = PRIMARY
        .iter()
        .chain(others)
        .copied()
        .filter(|&t| t != first)
        .collect();
    rng.shuffle(&mut pool);
    let mut out = vec![template(first, d)];
    for t in pool {
        if out.len() == 5 {
            break;
        }
        let c = template(t, d);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    (out, first)
}

const UNRELATED: [&str; 14] = [
    "click here to enlarge",
    "stock photo",
    "free shipping on all orders",
    "best price guaranteed",
    "untitled design",
    "thumbnail",
    "company logo",
    "a photo of my dog at the beach",
    "our new kitchen after the renovation",
    "view larger image",
    "screenshot",
    "sunset over the mountains",
    "wedding day memories",
    "product image",
];

/// Corrupts the training caption like web alt-text: returns the caption. `kind`
/// indexes [`CORRUPTIONS`].
pub(crate) fn corrupt(
    kind: usize,
    d: &Desc,
    template_id: usize,
    clean: &str,
    rng: &mut SplitMix64,
) -> String {
    let mut wrong = d.clone();
    let gi = rng.below_from_high_bits(d.groups.len());
    match CORRUPTIONS[kind] {
        "wrong_color" => {
            let used: Vec<usize> = d.groups.iter().map(|g| g.kind.color).collect();
            let c = loop {
                let c = rng.below_from_high_bits(COLORS.len());
                if !used.contains(&c) && c != d.bg_color {
                    break c;
                }
            };
            wrong.groups[gi].kind.color = c;
            template(template_id, &wrong)
        }
        "wrong_shape" => {
            let used: Vec<usize> = d.groups.iter().map(|g| g.kind.shape).collect();
            let s = loop {
                let s = rng.below_from_high_bits(SHAPES.len());
                if !used.contains(&s) {
                    break s;
                }
            };
            wrong.groups[gi].kind.shape = s;
            template(template_id, &wrong)
        }
        "wrong_count" => {
            let old = d.groups[gi].count;
            let n = loop {
                let n = 1 + rng.below_from_high_bits(4);
                if n != old {
                    break n;
                }
            };
            wrong.groups[gi].count = n;
            template(template_id, &wrong)
        }
        "unrelated" => {
            let base = UNRELATED[rng.below_from_high_bits(UNRELATED.len())];
            match rng.below_from_high_bits(3) {
                0 => format!("img_{:04}.jpg", rng.below_from_high_bits(10000)),
                1 => format!("{base} {}", 1 + rng.below_from_high_bits(99)),
                _ => base.to_string(),
            }
        }
        _ => {
            let words: Vec<&str> = clean.split(' ').collect();
            // Keep between one word and all but two (all but one for two words).
            let keep = 1 + rng.below_from_high_bits(words.len().saturating_sub(2).max(1));
            words[..keep.min(words.len().saturating_sub(1))].join(" ")
        }
    }
}

/// A question with its answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QaPair {
    pub question: String,
    pub answer: String,
}

fn qa(q: String, a: impl Into<String>) -> QaPair {
    QaPair {
        question: q,
        answer: a.into(),
    }
}

/// Questions with answers computed from the objects themselves.
pub(crate) fn questions(scene: &Scene, d: &Desc, rng: &mut SplitMix64) -> Vec<QaPair> {
    let objs = &scene.objects;
    let mut shapes: Vec<usize> = Vec::new();
    for o in objs {
        if !shapes.contains(&o.kind.shape) {
            shapes.push(o.kind.shape);
        }
    }
    let mut out = Vec::new();
    for &s in &shapes {
        let of_shape: Vec<_> = objs.iter().filter(|o| o.kind.shape == s).collect();
        let color = of_shape[0].kind.color;
        if of_shape.iter().all(|o| o.kind.color == color) {
            let q = if of_shape.len() == 1 {
                format!("what color is the {}?", SHAPES[s].0)
            } else {
                format!("what color are the {}?", SHAPES[s].1)
            };
            out.push(qa(q, COLORS[color].0));
        }
        out.push(qa(
            format!("how many {} are there?", SHAPES[s].1),
            of_shape.len().to_string(),
        ));
    }
    let absent: Vec<usize> = (0..SHAPES.len()).filter(|s| !shapes.contains(s)).collect();
    let missing = absent[rng.below_from_high_bits(absent.len())];
    out.push(qa(
        format!("how many {} are there?", SHAPES[missing].1),
        "0",
    ));
    out.push(qa(
        "how many objects are there?".into(),
        objs.len().to_string(),
    ));
    for o in objs {
        out.push(qa(
            format!("what shape is in the {}?", POSITIONS[o.cell]),
            SHAPES[o.kind.shape].0,
        ));
        out.push(qa(
            format!(
                "what color is the {} in the {}?",
                SHAPES[o.kind.shape].0, POSITIONS[o.cell]
            ),
            COLORS[o.kind.color].0,
        ));
    }
    let present = shapes[rng.below_from_high_bits(shapes.len())];
    out.push(qa(format!("is there a {}?", SHAPES[present].0), "yes"));
    let missing = absent[rng.below_from_high_bits(absent.len())];
    out.push(qa(format!("is there a {}?", SHAPES[missing].0), "no"));
    out.push(qa(
        "what color is the background?".into(),
        COLORS[scene.bg_color].0,
    ));
    for g in d.groups.iter().filter(|g| g.count == 1) {
        out.push(qa(
            format!(
                "what size is the {} {}?",
                COLORS[g.kind.color].0, SHAPES[g.kind.shape].0
            ),
            SIZES[g.kind.size].0,
        ));
    }
    if let (true, Some(rel)) = (is_pair(&d.groups), d.relation) {
        let (a, b) = (&d.groups[0], &d.groups[1]);
        let name = |g: &Group| format!("{} {}", COLORS[g.kind.color].0, SHAPES[g.kind.shape].0);
        out.push(qa(
            format!("is the {} {} the {}?", name(a), rel_phrase(rel), name(b)),
            "yes",
        ));
        out.push(qa(
            format!(
                "is the {} {} the {}?",
                name(a),
                rel_phrase(inverse(rel)),
                name(b)
            ),
            "no",
        ));
    }
    out
}
