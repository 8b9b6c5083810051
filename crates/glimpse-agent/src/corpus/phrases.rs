//! The request grammar: a request is composed clause by clause, one clause per step of
//! its plan, from task clauses (caption, ask, classify, match, find, find similar,
//! write, write from a result), each with many verb frames, filled with an image
//! reference of the kind the step needs ("this photo", "the second one", "each of
//! these three images", "them"), joined by connectors ("and then", ". after that,"),
//! and wrapped in polite prefixes and suffixes. A two-clause intent so has thousands
//! of surface forms, and a held-out plan shape (retrieve → ask) is written from the
//! same clauses that trained shapes use (retrieve → caption, ask about one image).
//!
//! Held out for the test split: the last entry of every frame list, of the
//! connectors, of the prefixes and of the suffixes. Each held-out frame is built from
//! words that other frames use, so a held-out phrasing is a new combination of known
//! words, not a new vocabulary.

use glimpse_data::rng::SplitMix64 as Rng;

/// What a clause asks for; each has its own frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clause {
    Caption,
    Ask,
    Classify,
    Match,
    Find,
    Similar,
    Write,
    /// Text generation from an earlier result ("write a poem about it").
    WriteFrom,
    /// Which of several images shows an object (a matching fan-out).
    MatchWhich,
    /// Which image shows an object, and what else is in it.
    WhichElse,
}

/// What a clause's `{img}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    /// No image reference (the frame must not hold `{img}`).
    None,
    /// The request's one image.
    Single,
    /// The request's one image, as a later clause may name it ("it" included).
    SingleAgain,
    /// The K-th of several images.
    Kth,
    /// Each of several images.
    Each,
    /// The images an earlier retrieval found.
    Found,
    /// The text an earlier step wrote.
    Written,
}

const CAPTION: &[&str] = &[
    "describe {img}",
    "caption {img}",
    "write a caption for {img}",
    "summarise {img}",
    "what is in {img}?",
    "what does {img} show?",
    "tell me what {img} shows",
    "give me a short description of {img}",
    "say what you see in {img}",
    "what is shown in {img}?",
    "explain what is in {img}",
    "summarize what {img} shows",
    "what can you see in {img}?",
];

const ASK: &[&str] = &[
    "{q}",
    "{img}: {q}",
    "look at {img}: {q}",
    "about {img}, {q}",
    "answer from {img}: {q}",
    "tell me, {q}",
    "answer this about {img}: {q}",
    "i have a question about {img}: {q}",
    "answer: {q}",
    "for {img}, {q}",
    "question about {img}: {q}",
];

const CLASSIFY: &[&str] = &[
    "is {img} {labels}?",
    "classify {img} as {labels}",
    "which fits {img} best: {labels}?",
    "does {img} show {labels}?",
    "label {img} as {labels}",
    "decide whether {img} is {labels}",
    "categorise {img}: {labels}?",
    "tell me if {img} is {labels}",
    "which label fits {img}: {labels}?",
    "tell me whether {img} shows {labels}",
];

const MATCH: &[&str] = &[
    "does {img} show {obj}?",
    "is there {obj} in {img}?",
    "how well does \"{obj}\" describe {img}?",
    "check whether {img} contains {obj}",
    "does {img} contain {obj}?",
    "can you see {obj} in {img}?",
    "tell me if {img} has {obj}",
    "score {img} against {obj}",
    "does {obj} appear in {img}?",
    "check if {img} shows {obj}",
];

const FIND: &[&str] = &[
    "find pictures of {obj}",
    "search the collection for {obj}",
    "show me images with {obj}",
    "i am looking for photos of {obj}",
    "look for {obj}",
    "retrieve images of {obj}",
    "search for {obj}",
    "get me a picture of {obj}",
    "find a photo of {obj}",
    "fetch an image showing {obj}",
    "look up {obj} in the collection",
    "find me an image showing {obj}",
];

const SIMILAR: &[&str] = &[
    "find images like {img}",
    "search for pictures similar to {img}",
    "show me more photos that look like {img}",
    "which images in the collection resemble {img}?",
    "look for pictures resembling {img}",
    "retrieve images alike to {img}",
    "get photos similar to {img}",
    "find pictures that look like {img}",
    "search the collection for images like {img}",
    "show me photos resembling {img}",
];

const WRITE: &[&str] = &[
    "write {topic}",
    "compose {topic}",
    "can you write me {topic}?",
    "i would like {topic}",
    "write me {topic}",
    "make up {topic}",
    "create {topic}",
    "give me {topic}",
];

const WRITE_FROM: &[&str] = &[
    "write a poem about {img}",
    "turn {img} into a story",
    "continue {img} as a story",
    "expand {img} into a paragraph",
    "make a haiku out of {img}",
    "write a short story based on {img}",
    "compose a riddle about {img}",
    "write a riddle based on {img}",
];

const MATCH_WHICH: &[&str] = &[
    "which of these images shows {obj}?",
    "in which of the {n} pictures is there {obj}?",
    "check each photo for {obj}",
    "which picture has {obj} in it?",
    "which one contains {obj}?",
    "find the image with {obj}",
    "which of the {n} photos shows {obj}?",
    "tell me which of these {n} images contains {obj}",
];

const WHICH_ELSE: &[&str] = &[
    "which of these images has {obj}, and what else is in it?",
    "find the picture with {obj} and tell me what else it shows",
    "one of these photos contains {obj}; which one, and what is next to it?",
    "which image shows {obj}? describe the rest of that image too",
    "which picture contains {obj}, and what else does it show?",
];

const SINGLE: &[&str] = &[
    "this image",
    "this picture",
    "this photo",
    "the image",
    "the picture",
    "the photo",
    "this one",
    "image 1",
    "my picture",
    "the attached image",
];

const KTH: &[&str] = &[
    "the {k} image",
    "image {d}",
    "picture number {d}",
    "the {k} one",
    "the {k} picture",
    "the {k} of these {n} images",
    "photo {d}",
    "the {k} photo",
];

const EACH: &[&str] = &[
    "each of these {n} images",
    "every picture",
    "each photo",
    "all {n} pictures",
    "each one",
    "every one of these {n} photos",
    "each image",
    "all of them",
];

const FOUND: &[&str] = &[
    "it",
    "them",
    "the result",
    "the results",
    "what you find",
    "the images you find",
    "those pictures",
    "the matches",
    "the best match",
];

const WRITTEN: &[&str] = &["it", "the caption", "the description", "that"];

/// Between clauses: held out, the last.
const CONNECTORS: &[&str] = &[
    " and ",
    ", then ",
    " and then ",
    ". after that, ",
    "; ",
    ", and also ",
    ". then ",
    ", next, ",
    ". also, ",
    " and next ",
];

/// Before an imperative first clause.
const PREFIXES: &[&str] = &[
    "",
    "",
    "",
    "please ",
    "could you ",
    "can you ",
    "i want you to ",
    "hey, ",
    "i need you to ",
    "could you please ",
];

/// After an imperative last clause.
const SUFFIXES: &[&str] = &[
    "",
    "",
    "",
    " please",
    ", thanks",
    " for me",
    ", thank you",
    " for me, thanks",
];

/// Ends of an imperative request.
const ENDS: &[&str] = &[".", "", "!", "."];

fn frames(c: Clause) -> &'static [&'static str] {
    match c {
        Clause::Caption => CAPTION,
        Clause::Ask => ASK,
        Clause::Classify => CLASSIFY,
        Clause::Match => MATCH,
        Clause::Find => FIND,
        Clause::Similar => SIMILAR,
        Clause::Write => WRITE,
        Clause::WriteFrom => WRITE_FROM,
        Clause::MatchWhich => MATCH_WHICH,
        Clause::WhichElse => WHICH_ELSE,
    }
}

fn refs(r: Ref) -> &'static [&'static str] {
    match r {
        Ref::None => &[""],
        Ref::Single => SINGLE,
        Ref::SingleAgain => &SINGLE_AGAIN,
        Ref::Kth => KTH,
        Ref::Each => EACH,
        Ref::Found => FOUND,
        Ref::Written => WRITTEN,
    }
}

const SINGLE_AGAIN: [&str; 11] = [
    "this image",
    "this picture",
    "this photo",
    "the image",
    "the picture",
    "the photo",
    "this one",
    "image 1",
    "my picture",
    "the attached image",
    "it",
];

/// The frames `c` may use with `r`: a reference that carries meaning (which image,
/// each image, an earlier result) must appear in the clause; none may appear where
/// there is nothing to name.
fn usable(c: Clause, r: Ref) -> Vec<usize> {
    frames(c)
        .iter()
        .enumerate()
        .filter(|(_, f)| match r {
            Ref::None => !f.contains("{img}"),
            Ref::Single | Ref::SingleAgain => true,
            _ => f.contains("{img}"),
        })
        .map(|(i, _)| i)
        .collect()
}

/// The choices that phrase one request: per clause its frame and reference, the
/// connectors between clauses, a prefix, a suffix and an end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phrasing {
    pub clauses: Vec<(usize, usize)>,
    pub connectors: Vec<usize>,
    pub prefix: usize,
    pub suffix: usize,
    pub end: usize,
}

/// Whether a phrasing must use a held-out part (test), must not (training), or may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Train,
    Test,
    Any,
}

fn is_last(i: usize, list: &[&str]) -> bool {
    i + 1 == list.len()
}

/// Whether frame `f` of `c` is a question (it then takes no prefix or suffix).
fn asks(c: Clause, f: usize) -> bool {
    let t = frames(c)[f];
    t.ends_with('?') || t.ends_with("{q}")
}

impl Phrasing {
    /// Whether any part is held out for the test split.
    pub fn held_out(&self, parts: &[(Clause, Ref)]) -> bool {
        self.clauses
            .iter()
            .zip(parts)
            .any(|((f, _), (c, _))| is_last(*f, frames(*c)))
            || self.connectors.iter().any(|&c| is_last(c, CONNECTORS))
            || is_last(self.prefix, PREFIXES)
            || is_last(self.suffix, SUFFIXES)
    }

    /// A name of the phrasing: the parts it used.
    pub fn signature(&self) -> String {
        let c: Vec<String> = self
            .clauses
            .iter()
            .map(|(f, r)| format!("f{f}r{r}"))
            .collect();
        let j: Vec<String> = self.connectors.iter().map(|c| c.to_string()).collect();
        format!(
            "{}|c{}|p{}s{}e{}",
            c.join("+"),
            j.join("."),
            self.prefix,
            self.suffix,
            self.end
        )
    }

    /// A random phrasing of `parts` that satisfies `hold`.
    pub fn draw(rng: &mut Rng, parts: &[(Clause, Ref)], hold: Hold) -> Self {
        loop {
            let pick = |rng: &mut Rng, n: usize| rng.below_from_high_bits(n);
            let clauses = parts
                .iter()
                .map(|&(c, r)| {
                    let ok = usable(c, r);
                    (ok[pick(rng, ok.len())], pick(rng, refs(r).len()))
                })
                .collect();
            let connectors = (1..parts.len())
                .map(|_| pick(rng, CONNECTORS.len()))
                .collect();
            let mut p = Self {
                clauses,
                connectors,
                prefix: pick(rng, PREFIXES.len()),
                suffix: pick(rng, SUFFIXES.len()),
                end: pick(rng, ENDS.len()),
            };
            // Questions take no prefix (first) or suffix and end (last).
            if asks(parts[0].0, p.clauses[0].0) {
                p.prefix = 0;
            }
            let last = parts.len() - 1;
            if asks(parts[last].0, p.clauses[last].0) {
                p.suffix = 0;
                p.end = 0;
            }
            let ok = match hold {
                Hold::Any => true,
                Hold::Train => !p.held_out(parts),
                Hold::Test => p.held_out(parts),
            };
            if ok {
                return p;
            }
        }
    }
}

/// Slot values as words: `{obj}`, `{obj2}`, `{q}`, `{labels}`, `{topic}`, `{k}` (an
/// ordinal), `{d}` (its digit) and `{n}` (the image count as a word).
pub struct Fill<'a> {
    pub obj: &'a str,
    pub q: &'a str,
    pub labels: &'a str,
    pub topic: &'a str,
    pub k: &'a str,
    pub d: String,
    pub n: &'a str,
}

/// The request that `p` phrases `parts` as.
pub fn render(parts: &[(Clause, Ref)], p: &Phrasing, fill: &Fill<'_>, objs: &[&str]) -> String {
    let mut out = String::new();
    let mut first_question = false;
    let mut last_question = false;
    for (i, ((c, r), (f, rf))) in parts.iter().zip(&p.clauses).enumerate() {
        let reference = refs(*r)[*rf];
        let obj = objs.get(i).copied().unwrap_or(fill.obj);
        let text = frames(*c)[*f]
            .replace("{img}", reference)
            .replace("{obj}", obj)
            .replace("{q}", fill.q)
            .replace("{labels}", fill.labels)
            .replace("{topic}", fill.topic)
            .replace("{k}", fill.k)
            .replace("{d}", &fill.d)
            .replace("{n}", fill.n);
        let question = asks(*c, *f);
        if i == 0 {
            first_question = question;
        } else {
            let conn = CONNECTORS[p.connectors[i - 1]];
            if last_question {
                // After a question mark the connector starts a new sentence.
                out.push(' ');
                out.push_str(conn.trim_start_matches([',', '.', ';', ' ']));
            } else {
                out.push_str(conn);
            }
        }
        out.push_str(&text);
        last_question = question;
    }
    let mut request = String::new();
    if !first_question {
        request.push_str(PREFIXES[p.prefix]);
    }
    request.push_str(&out);
    if !last_question {
        request.push_str(SUFFIXES[p.suffix]);
        request.push_str(ENDS[p.end]);
    }
    request.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str], skip_last: bool) -> std::collections::BTreeSet<String> {
        let n = if skip_last {
            list.len() - 1
        } else {
            list.len()
        };
        list[..n]
            .iter()
            .flat_map(|f| f.split(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn held_out_frames_use_only_trained_words() {
        let lists = [
            CAPTION,
            ASK,
            CLASSIFY,
            MATCH,
            FIND,
            SIMILAR,
            WRITE,
            WRITE_FROM,
            MATCH_WHICH,
            WHICH_ELSE,
            CONNECTORS,
            PREFIXES,
            SUFFIXES,
        ];
        let mut trained = std::collections::BTreeSet::new();
        for l in lists {
            trained.extend(words(l, true));
        }
        for l in [SINGLE, KTH, EACH, FOUND, WRITTEN] {
            trained.extend(words(l, false));
        }
        for l in lists {
            let last = l[l.len() - 1];
            for w in words(&[last], false) {
                assert!(trained.contains(&w), "{w:?} of held-out {last:?}");
            }
        }
    }
}
