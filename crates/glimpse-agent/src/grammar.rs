//! The plan grammar: decides whether a text is a prefix of a canonical plan
//! ([`crate::Plan::to_json`]) that validates against a [`Catalog`] and a number of
//! request images, so a decoder can allow, at every step, only the tokens that keep
//! its output such a prefix.
//!
//! The language: `{"tasks":[` tasks `]}` with no white space; task `i` (from 0) is
//! `{"id":i,"task":"NAME","dep":[DEPS],"args":{ARGS}}` where NAME is a catalog task
//! (external tools included) that can get its required image, DEPS is `-1` or
//! increasing ids of earlier tasks, and ARGS are the names the task takes in canonical
//! order (image, text, question, labels) with every required one present. An image
//! is `"<image>-K"` with `1 <= K <= images` or `"<resource>-N"`; a text or question is
//! a literal or `"<resource>-N"`; labels are a list of literals or `"<resource>-N"`;
//! `N` is always listed in DEPS and its task's output fits the argument. Literals are
//! non-empty, start with a non-space, hold no `"`, `\` or `<` (so none reads as a
//! reference) and are at most [`MAX_LITERAL`] bytes. Every allowed prefix has a
//! completion: choices that would lead to a dead end (an image argument with no image
//! to take, another task past [`MAX_TASKS`]) are refused where they are made.

use crate::tasks::{ArgName, Catalog, OutputKind};

/// Most tasks in a plan.
pub const MAX_TASKS: usize = 8;
/// Longest literal text, in bytes.
pub const MAX_LITERAL: usize = 160;
/// Most labels in a list.
pub const MAX_LABELS: usize = 8;

/// Where a text stands in the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A whole plan.
    Complete,
    /// A proper prefix of some plan.
    Prefix,
    /// No plan starts so; the message says where and why.
    Invalid(String),
}

/// The grammar of plans over one catalog and image count.
#[derive(Debug, Clone)]
pub struct PlanGrammar<'c> {
    catalog: &'c Catalog,
    images: usize,
}

enum Stop {
    More,
    Bad(String),
}

type R<T> = std::result::Result<T, Stop>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(Stop::Bad(msg.into()))
}

impl<'c> PlanGrammar<'c> {
    pub fn new(catalog: &'c Catalog, images: usize) -> Self {
        Self { catalog, images }
    }

    /// Whether `text` is a plan, a prefix of one, or neither.
    pub fn check(&self, text: &str) -> Status {
        let mut p = Parser {
            g: self,
            s: text.as_bytes(),
            i: 0,
        };
        match p.plan() {
            Ok(()) if p.i == p.s.len() => Status::Complete,
            Ok(()) => Status::Invalid(format!("text after the plan at byte {}", p.i)),
            Err(Stop::More) => Status::Prefix,
            Err(Stop::Bad(m)) => Status::Invalid(format!("at byte {}: {m}", p.i)),
        }
    }
}

struct Parser<'a, 'c> {
    g: &'a PlanGrammar<'c>,
    s: &'a [u8],
    i: usize,
}

/// An earlier task as later ones see it.
struct Done {
    output: OutputKind,
}

impl Parser<'_, '_> {
    fn peek(&self) -> R<u8> {
        self.s.get(self.i).copied().ok_or(Stop::More)
    }

    fn lit(&mut self, t: &str) -> R<()> {
        for b in t.bytes() {
            if self.peek()? != b {
                return bad(format!("expected {t:?}"));
            }
            self.i += 1;
        }
        Ok(())
    }

    /// A decimal number from `cands` (no leading zeros), ended by a non-digit.
    fn num_in(&mut self, cands: &[usize], what: &str) -> R<usize> {
        let mut typed = String::new();
        loop {
            match self.s.get(self.i) {
                Some(c) if c.is_ascii_digit() => {
                    typed.push(*c as char);
                    if !cands.iter().any(|v| v.to_string().starts_with(&typed)) {
                        return bad(format!("{what} {typed} is not one of {cands:?}"));
                    }
                    self.i += 1;
                }
                Some(_) => {
                    return match cands.iter().find(|v| v.to_string() == typed) {
                        Some(v) => Ok(*v),
                        None => bad(format!("{what} {typed:?} is not one of {cands:?}")),
                    }
                }
                None => return Err(Stop::More),
            }
        }
    }

    /// One of `names`, up to the closing quote (consumed).
    fn choice(&mut self, names: &[&str], what: &str) -> R<usize> {
        let start = self.i;
        loop {
            let c = self.peek()?;
            let typed = &self.s[start..self.i];
            if c == b'"' {
                return match names.iter().position(|n| n.as_bytes() == typed) {
                    Some(k) => {
                        self.i += 1;
                        Ok(k)
                    }
                    None => bad(format!("unknown {what}")),
                };
            }
            let next = self.i + 1 - start;
            let ok = names.iter().any(|n| {
                n.len() >= next && n.as_bytes()[..next - 1] == *typed && n.as_bytes()[next - 1] == c
            });
            if !ok {
                return bad(format!("no {what} starts so"));
            }
            self.i += 1;
        }
    }

    fn plan(&mut self) -> R<()> {
        self.lit("{\"tasks\":[")?;
        let mut done: Vec<Done> = Vec::new();
        loop {
            self.task(&mut done)?;
            match self.peek()? {
                b',' if done.len() < MAX_TASKS => self.i += 1,
                b']' => return self.lit("]}"),
                _ => return bad(format!("expected `,` or `]` after task {}", done.len() - 1)),
            }
        }
    }

    fn image_possible(&self, deps: &[usize], done: &[Done]) -> bool {
        self.g.images > 0 || deps.iter().any(|&d| ArgName::Image.accepts(done[d].output))
    }

    fn task(&mut self, done: &mut Vec<Done>) -> R<()> {
        let id = done.len();
        self.lit("{\"id\":")?;
        self.num_in(&[id], "id")?;
        self.lit(",\"task\":\"")?;
        let all: Vec<usize> = (0..id).collect();
        // A task that needs an image only where one can be had.
        let specs: Vec<_> = self
            .g
            .catalog
            .specs()
            .iter()
            .filter(|s| !s.required.contains(&ArgName::Image) || self.image_possible(&all, done))
            .collect();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let spec = specs[self.choice(&names, "task name")?];
        self.lit(",\"dep\":[")?;
        let mut deps: Vec<usize> = Vec::new();
        // With no request image, a task that needs one must depend on a task whose
        // result is an image; keep that reachable.
        let needs = spec.required.contains(&ArgName::Image) && self.g.images == 0;
        if self.peek()? == b'-' {
            if needs {
                return bad(format!(
                    "`{}` needs an image, and none is at hand",
                    spec.name
                ));
            }
            self.lit("-1]")?;
        } else {
            let gives_image = |d: usize| ArgName::Image.accepts(done[d].output);
            loop {
                let from = deps.last().map_or(0, |d| d + 1);
                let have = deps.iter().any(|&d| gives_image(d));
                let cands: Vec<usize> = (from..id)
                    .filter(|&d| !needs || have || gives_image(d) || (d + 1..id).any(gives_image))
                    .collect();
                let d = self.num_in(&cands, "dependency")?;
                deps.push(d);
                match self.peek()? {
                    b',' if d + 1 < id => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return bad("expected `,` or `]` in `dep`"),
                }
            }
        }
        if spec.required.contains(&ArgName::Image) && !self.image_possible(&deps, done) {
            return bad(format!(
                "`{}` needs an image, and none is at hand",
                spec.name
            ));
        }
        self.lit(",\"args\":{")?;
        let mut last: Option<ArgName> = None;
        loop {
            // Names after `last`, up to and including the first required one missing.
            let mut cands: Vec<ArgName> = Vec::new();
            for a in ArgName::ALL {
                if last.is_some_and(|l| a <= l) || !spec.takes(a) {
                    continue;
                }
                if a == ArgName::Image && !self.image_possible(&deps, done) {
                    continue;
                }
                cands.push(a);
                if spec.required.contains(&a) {
                    break;
                }
            }
            if cands.is_empty() {
                return bad("no argument can follow");
            }
            self.lit("\"")?;
            let names: Vec<&str> = cands.iter().map(|a| a.as_str()).collect();
            let name = cands[self.choice(&names, "argument name")?];
            self.lit(":")?;
            self.value(name, &deps, done)?;
            last = Some(name);
            let missing = spec.required.iter().any(|r| *r > name);
            let more = ArgName::ALL.iter().any(|a| {
                *a > name
                    && spec.takes(*a)
                    && (*a != ArgName::Image || self.image_possible(&deps, done))
            });
            match self.peek()? {
                b',' if more => self.i += 1,
                b'}' if !missing => break,
                _ => return bad("expected the next argument or the end of `args`"),
            }
        }
        self.lit("}}")?;
        done.push(Done {
            output: spec.output,
        });
        Ok(())
    }

    fn resource(&mut self, name: ArgName, deps: &[usize], done: &[Done]) -> R<()> {
        let cands: Vec<usize> = deps
            .iter()
            .copied()
            .filter(|&d| name.accepts(done[d].output))
            .collect();
        if cands.is_empty() {
            return bad(format!("no dependency's result fits `{name}`"));
        }
        self.lit("resource>-")?;
        self.num_in(&cands, "resource")?;
        self.lit("\"")
    }

    fn value(&mut self, name: ArgName, deps: &[usize], done: &[Done]) -> R<()> {
        match name {
            ArgName::Image => {
                self.lit("\"<")?;
                if self.peek()? == b'i' && self.g.images > 0 {
                    self.lit("image>-")?;
                    let cands: Vec<usize> = (1..=self.g.images).collect();
                    self.num_in(&cands, "image")?;
                    self.lit("\"")
                } else {
                    self.resource(name, deps, done)
                }
            }
            ArgName::Text | ArgName::Question => {
                self.lit("\"")?;
                if self.peek()? == b'<' {
                    self.i += 1;
                    self.resource(name, deps, done)
                } else {
                    self.literal()
                }
            }
            ArgName::Labels => match self.peek()? {
                b'[' => {
                    self.i += 1;
                    let mut n = 0;
                    loop {
                        self.lit("\"")?;
                        self.literal()?;
                        n += 1;
                        match self.peek()? {
                            b',' if n < MAX_LABELS => self.i += 1,
                            b']' => {
                                self.i += 1;
                                return Ok(());
                            }
                            _ => return bad("expected `,` or `]` in `labels`"),
                        }
                    }
                }
                _ if deps.iter().any(|&d| name.accepts(done[d].output)) => {
                    self.lit("\"<")?;
                    self.resource(name, deps, done)
                }
                _ => bad("expected a list of labels"),
            },
        }
    }

    /// The body of a literal string and its closing quote.
    fn literal(&mut self) -> R<()> {
        let start = self.i;
        loop {
            let c = self.peek()?;
            let len = self.i - start;
            match c {
                b'"' if len > 0 => {
                    self.i += 1;
                    return Ok(());
                }
                b'"' => return bad("an empty text"),
                b'\\' | b'<' => return bad("`\\` and `<` are not allowed in a text"),
                c if c < 0x20 => return bad("a control character in a text"),
                b' ' if len == 0 => return bad("a text starts with a space"),
                _ if len >= MAX_LITERAL => return bad("the text is too long"),
                _ => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests;
