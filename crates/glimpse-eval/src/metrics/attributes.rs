//! Attribute accuracy of captions for the synthetic world (`glimpse_synth`):
//! does a generated caption say the right things about a single-object image?
//!
//! The caption is tokenised like the caption metrics ([`tokenize_caption`]) and read
//! for statements in the generator's vocabulary:
//!
//! - shape: a shape word, singular or plural ("circle", "circles");
//! - colour: a colour word outside the background phrase;
//! - size: "small", "medium", "large";
//! - position: one of the nine grid phrases ("top left", "center", "bottom right").
//!   A row or column word that forms none of them ("in the left", "middle") is a
//!   position statement that cannot be right;
//! - count: a number word "zero".."ten" or a number in digits, and a plural shape
//!   word (which says "more than one");
//! - background: the words right before "background" that are colour or style words,
//!   as in the generator's "on a [gradient|checkered|speckled] COLOUR background"
//!   (also "solid", "plain", "noisy"). A colour word there is checked against the
//!   background colour, not the object's. "on a red background" states no style (the
//!   generator uses it for every style), so only its colour is checked.
//!
//! Other words (articles, "image", "picture", "there is", "in the") are ignored.
//! Each attribute is [`Judgement::Correct`] when it is stated and every statement of
//! it is right, [`Judgement::Wrong`] when any statement of it is wrong, and
//! [`Judgement::NotMentioned`] otherwise. A caption is fully correct when it names the
//! shape and the colour correctly and nothing it says is wrong.

use serde::{Deserialize, Serialize};

use glimpse_synth::vocab::{BACKGROUND_STYLES, COLORS, POSITIONS, SHAPES, SIZES};

use super::caption::tokenize_caption;
use super::{invalid, Result, NUMBER_WORDS};

/// Caption words for background styles -> the record's style name. The first of each
/// style is what the generator writes (`bg_phrase` in glimpse-data's
/// `synth/text.rs`); "solid" has no word there.
const STYLE_WORDS: [(&str, &str); 8] = [
    ("gradient", "gradient"),
    ("checkered", "checker"),
    ("speckled", "noise"),
    ("solid", "solid"),
    ("plain", "solid"),
    ("checker", "checker"),
    ("noisy", "noise"),
    ("noise", "noise"),
];

/// How one attribute of a caption compares with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    Correct,
    Wrong,
    NotMentioned,
}

/// Per-attribute verdicts on a caption; see the module doc for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttributeCheck {
    pub shape: Judgement,
    pub color: Judgement,
    pub size: Judgement,
    pub position: Judgement,
    pub count: Judgement,
    pub background: Judgement,
    /// Shape and colour correct, nothing wrong.
    pub all_correct: bool,
    /// One line per wrong statement, e.g. "color: says blue, the object is red".
    pub mistakes: Vec<String>,
}

#[derive(Deserialize)]
struct Record {
    objects: Vec<ObjectRecord>,
    background: BackgroundRecord,
    count: usize,
}

#[derive(Deserialize)]
struct ObjectRecord {
    shape: String,
    color: String,
    size: String,
    position: String,
}

#[derive(Deserialize)]
struct BackgroundRecord {
    style: String,
    color: String,
}

/// What a caption states, in record terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Statement {
    /// Singular shape name, and whether the word was plural.
    Shape(&'static str, bool),
    Color(&'static str),
    Size(&'static str),
    /// A grid position, or `None` for a row/column word that forms no position.
    Position(Option<&'static str>),
    Count(usize),
    BackgroundColor(&'static str),
    BackgroundStyle(&'static str),
}

fn color_word(w: &str) -> Option<&'static str> {
    COLORS.iter().map(|c| c.0).find(|c| *c == w)
}

fn style_word(w: &str) -> Option<&'static str> {
    STYLE_WORDS.iter().find(|s| s.0 == w).map(|s| s.1)
}

fn is_position_word(w: &str) -> bool {
    POSITIONS.iter().any(|p| p.split(' ').any(|part| part == w))
}

fn statements(words: &[String]) -> Vec<Statement> {
    // Background phrases: the colour/style words right before each "background".
    let mut in_background = vec![false; words.len()];
    for (b, _) in words.iter().enumerate().filter(|(_, w)| *w == "background") {
        let mut j = b;
        while j > 0 && (color_word(&words[j - 1]).is_some() || style_word(&words[j - 1]).is_some())
        {
            j -= 1;
            in_background[j] = true;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if in_background[i] {
            out.extend(color_word(w).map(Statement::BackgroundColor));
            out.extend(style_word(w).map(Statement::BackgroundStyle));
            i += 1;
            continue;
        }
        if let Some(next) = words.get(i + 1) {
            let pair = format!("{w} {next}");
            if let Some(p) = POSITIONS.iter().find(|p| **p == pair) {
                out.push(Statement::Position(Some(p)));
                i += 2;
                continue;
            }
        }
        let s = if let Some(p) = POSITIONS.iter().find(|p| **p == w) {
            Some(Statement::Position(Some(p)))
        } else if is_position_word(w) {
            Some(Statement::Position(None))
        } else if let Some((one, many)) = SHAPES.iter().find(|(one, many)| *one == w || *many == w)
        {
            Some(Statement::Shape(one, w == *many))
        } else if let Some(c) = color_word(w) {
            Some(Statement::Color(c))
        } else if let Some((s, _)) = SIZES.iter().find(|s| s.0 == w) {
            Some(Statement::Size(s))
        } else if let Some(n) = NUMBER_WORDS.iter().position(|n| *n == w) {
            Some(Statement::Count(n))
        } else if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
            // Saturates on absurd digit strings, which are wrong counts anyway.
            Some(Statement::Count(w.parse().unwrap_or(usize::MAX)))
        } else {
            None
        };
        out.extend(s);
        i += 1;
    }
    out
}

/// Folds the verdicts on the statements of one attribute.
struct Verdict {
    said: bool,
    wrong: bool,
}

impl Verdict {
    fn new() -> Self {
        Verdict {
            said: false,
            wrong: false,
        }
    }

    fn add(&mut self, right: bool) {
        self.said = true;
        self.wrong |= !right;
    }

    fn judgement(&self) -> Judgement {
        match (self.said, self.wrong) {
            (_, true) => Judgement::Wrong,
            (true, false) => Judgement::Correct,
            (false, false) => Judgement::NotMentioned,
        }
    }
}

fn parse_record(record: &serde_json::Value) -> Result<Record> {
    let r = Record::deserialize(record).map_err(|e| invalid("record", e.to_string()))?;
    if r.objects.len() != 1 {
        return Err(invalid(
            "record",
            format!(
                "holds {} objects; attribute checking handles single-object records",
                r.objects.len()
            ),
        ));
    }
    let o = &r.objects[0];
    let known = [
        ("shape", &o.shape, SHAPES.iter().any(|s| s.0 == o.shape)),
        ("color", &o.color, color_word(&o.color).is_some()),
        ("size", &o.size, SIZES.iter().any(|s| s.0 == o.size)),
        (
            "position",
            &o.position,
            POSITIONS.contains(&o.position.as_str()),
        ),
        (
            "background style",
            &r.background.style,
            BACKGROUND_STYLES.contains(&r.background.style.as_str()),
        ),
        (
            "background color",
            &r.background.color,
            color_word(&r.background.color).is_some(),
        ),
    ];
    if let Some((what, value, _)) = known.iter().find(|k| !k.2) {
        return Err(invalid(
            "record",
            format!("{what} {value:?} is not in the synthetic world's vocabulary"),
        ));
    }
    Ok(r)
}

/// Checks what `caption` says about the object of a single-object synthetic record.
///
/// `record` is the sample's JSON record (`glimpse_synth::SampleJson` as a
/// value): `objects` (exactly one, with `shape`, `color`, `size`, `position`),
/// `background` (`style`, `color`) and `count`; other fields are ignored. Any caption,
/// including an empty one, gets a verdict (an empty caption mentions nothing, so it is
/// not fully correct).
///
/// Errors: a record that lacks those fields, holds other than one object, or uses
/// words outside the synthetic vocabulary.
pub fn caption_attributes_correct(
    caption: &str,
    record: &serde_json::Value,
) -> Result<AttributeCheck> {
    let r = parse_record(record)?;
    let o = &r.objects[0];
    let mut shape = Verdict::new();
    let mut color = Verdict::new();
    let mut size = Verdict::new();
    let mut position = Verdict::new();
    let mut count = Verdict::new();
    let mut background = Verdict::new();
    let mut mistakes = Vec::new();
    let mut note = |verdict: &mut Verdict, right: bool, message: String| {
        verdict.add(right);
        if !right {
            mistakes.push(message);
        }
    };
    for s in statements(&tokenize_caption(caption)) {
        match s {
            Statement::Shape(name, plural) => {
                note(
                    &mut shape,
                    name == o.shape,
                    format!("shape: says {name}, the object is a {}", o.shape),
                );
                if plural {
                    note(
                        &mut count,
                        r.count > 1,
                        format!("count: says several {name}s, there are {}", r.count),
                    );
                }
            }
            Statement::Color(c) => note(
                &mut color,
                c == o.color,
                format!("color: says {c}, the object is {}", o.color),
            ),
            Statement::Size(z) => note(
                &mut size,
                z == o.size,
                format!("size: says {z}, the object is {}", o.size),
            ),
            Statement::Position(Some(p)) => note(
                &mut position,
                p == o.position,
                format!("position: says {p}, the object is in the {}", o.position),
            ),
            Statement::Position(None) => note(
                &mut position,
                false,
                format!(
                    "position: a row or column word that names no cell; the object is in the {}",
                    o.position
                ),
            ),
            Statement::Count(n) => note(
                &mut count,
                n == r.count,
                format!("count: says {n}, there are {}", r.count),
            ),
            Statement::BackgroundColor(c) => note(
                &mut background,
                c == r.background.color,
                format!("background: says {c}, it is {}", r.background.color),
            ),
            Statement::BackgroundStyle(st) => note(
                &mut background,
                st == r.background.style,
                format!("background: says {st}, it is {}", r.background.style),
            ),
        }
    }
    let check = AttributeCheck {
        shape: shape.judgement(),
        color: color.judgement(),
        size: size.judgement(),
        position: position.judgement(),
        count: count.judgement(),
        background: background.judgement(),
        all_correct: false,
        mistakes,
    };
    let all_correct = check.shape == Judgement::Correct
        && check.color == Judgement::Correct
        && [check.size, check.position, check.count, check.background]
            .iter()
            .all(|j| *j != Judgement::Wrong);
    Ok(AttributeCheck {
        all_correct,
        ..check
    })
}

#[cfg(test)]
mod tests;
