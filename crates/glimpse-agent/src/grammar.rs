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
//!
//! [`PlanGrammar::copying`] narrows the language to plans that take their literals
//! from the request, as the offline planner's are meant to: every literal (a text, a
//! question, a label) is a span of the request's words, starting at a word's start
//! and ending at a word's end, and an argument that can take the result of a
//! dependency no earlier argument has used must take it (`dep` lists only results the
//! task reads). A small planner model then cannot misspell a copied slot or stop it
//! mid-word, and a dependency it writes is always used.

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
    /// With [`Self::copying`]: the text literals are spans of.
    source: Option<Vec<u8>>,
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
        Self {
            catalog,
            images,
            source: None,
        }
    }

    /// The same grammar where literals are word spans of `request` and dependencies
    /// are used (see the module docs). A request with no word leaves literals free,
    /// so every task keeps a completion.
    pub fn copying(mut self, request: &str) -> Self {
        if request.bytes().any(|b| b.is_ascii_alphanumeric()) {
            self.source = Some(request.as_bytes().to_vec());
        }
        self
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

/// What the arguments still to come must take: the dependencies no argument used yet,
/// and the argument names after the current one.
struct Uses<'l> {
    unused: Vec<usize>,
    later: &'l [ArgName],
}

fn outs(deps: &[usize], done: &[Done]) -> Vec<OutputKind> {
    deps.iter().map(|&d| done[d].output).collect()
}

/// Whether each of `outs` (unused dependencies' results) can go to a different one of
/// `args`.
fn assignable(args: &[ArgName], outs: &[OutputKind]) -> bool {
    let Some((first, rest)) = outs.split_first() else {
        return true;
    };
    args.iter().enumerate().any(|(i, a)| {
        if !a.accepts(*first) {
            return false;
        }
        let mut others = args.to_vec();
        others.remove(i);
        assignable(&others, rest)
    })
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
            let taken: Vec<ArgName> = ArgName::ALL
                .into_iter()
                .filter(|a| spec.takes(*a))
                .collect();
            // Copying: every dependency's result goes to an argument of its own.
            let usable = |deps: &[usize], d: usize| {
                let outs: Vec<OutputKind> =
                    deps.iter().chain([&d]).map(|&x| done[x].output).collect();
                self.g.source.is_none() || assignable(&taken, &outs)
            };
            loop {
                let from = deps.last().map_or(0, |d| d + 1);
                let have = deps.iter().any(|&d| gives_image(d));
                let cands: Vec<usize> = (from..id)
                    .filter(|&d| !needs || have || gives_image(d) || (d + 1..id).any(gives_image))
                    .filter(|&d| usable(&deps, d))
                    .collect();
                let d = self.num_in(&cands, "dependency")?;
                deps.push(d);
                let another = (d + 1..id).any(|e| usable(&deps, e));
                match self.peek()? {
                    b',' if another => self.i += 1,
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
        let mut unused = deps.clone();
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
                // Copying: skipping to `a` leaves every unused result a place.
                let from_a: Vec<ArgName> = ArgName::ALL
                    .into_iter()
                    .filter(|x| *x >= a && spec.takes(*x))
                    .collect();
                if self.g.source.is_some() && !assignable(&from_a, &outs(&unused, done)) {
                    if spec.required.contains(&a) {
                        break;
                    }
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
            let later: Vec<ArgName> = ArgName::ALL
                .into_iter()
                .filter(|x| *x > name && spec.takes(*x))
                .collect();
            self.value(name, &deps, done, &mut unused, &later)?;
            last = Some(name);
            let missing = spec.required.iter().any(|r| *r > name);
            let more = ArgName::ALL.iter().any(|a| {
                *a > name
                    && spec.takes(*a)
                    && (*a != ArgName::Image || self.image_possible(&deps, done))
            });
            match self.peek()? {
                b',' if more => self.i += 1,
                b'}' if !missing && (self.g.source.is_none() || unused.is_empty()) => break,
                _ => return bad("expected the next argument or the end of `args`"),
            }
        }
        self.lit("}}")?;
        done.push(Done {
            output: spec.output,
        });
        Ok(())
    }

    /// `<resource>-N` after its `<`: N a dependency whose result fits `name`; copying,
    /// one that leaves every other unused result a place among the `later` arguments.
    fn resource(&mut self, name: ArgName, deps: &[usize], done: &[Done], u: &mut Uses) -> R<()> {
        let copying = self.g.source.is_some();
        let cands: Vec<usize> = deps
            .iter()
            .copied()
            .filter(|&d| name.accepts(done[d].output))
            .filter(|&d| {
                let rest: Vec<usize> = u.unused.iter().copied().filter(|&x| x != d).collect();
                !copying || assignable(u.later, &outs(&rest, done))
            })
            .collect();
        if cands.is_empty() {
            return bad(format!("no dependency's result fits `{name}`"));
        }
        self.lit("resource>-")?;
        let d = self.num_in(&cands, "resource")?;
        u.unused.retain(|&x| x != d);
        self.lit("\"")
    }

    /// Copying: whether a literal or request image here leaves every unused result a
    /// place among the later arguments.
    fn literal_fits(&self, u: &Uses, done: &[Done]) -> R<()> {
        if self.g.source.is_some() && !assignable(u.later, &outs(&u.unused, done)) {
            return bad("a dependency's result must go to this argument");
        }
        Ok(())
    }

    fn value(
        &mut self,
        name: ArgName,
        deps: &[usize],
        done: &[Done],
        unused: &mut Vec<usize>,
        later: &[ArgName],
    ) -> R<()> {
        let mut u = Uses {
            unused: std::mem::take(unused),
            later,
        };
        let r = self.value_in(name, deps, done, &mut u);
        *unused = u.unused;
        r
    }

    fn value_in(&mut self, name: ArgName, deps: &[usize], done: &[Done], u: &mut Uses) -> R<()> {
        match name {
            ArgName::Image => {
                self.lit("\"<")?;
                if self.peek()? == b'i' && self.g.images > 0 {
                    self.literal_fits(u, done)?;
                    self.lit("image>-")?;
                    let cands: Vec<usize> = (1..=self.g.images).collect();
                    self.num_in(&cands, "image")?;
                    self.lit("\"")
                } else {
                    self.resource(name, deps, done, u)
                }
            }
            ArgName::Text | ArgName::Question => {
                self.lit("\"")?;
                if self.peek()? == b'<' {
                    self.i += 1;
                    self.resource(name, deps, done, u)
                } else {
                    self.literal_fits(u, done)?;
                    self.literal(None).map(|_| ())
                }
            }
            ArgName::Labels => match self.peek()? {
                b'[' => {
                    self.literal_fits(u, done)?;
                    self.i += 1;
                    let mut n = 0;
                    // Copying: labels in the request's order, each after the last.
                    let mut from = 0;
                    loop {
                        self.lit("\"")?;
                        from = self.literal(Some(from))?;
                        n += 1;
                        let another = self
                            .g
                            .source
                            .as_ref()
                            .is_none_or(|src| !label_items(src, from).is_empty());
                        match self.peek()? {
                            b',' if n < MAX_LABELS && another => self.i += 1,
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
                    self.resource(name, deps, done, u)
                }
                _ => bad("expected a list of labels"),
            },
        }
    }

    /// The body of a literal string and its closing quote. `label`: a label, which
    /// (copying) starts at or after byte `from` of the request. Returns where its
    /// span ends in the request (0 without copying).
    fn literal(&mut self, label: Option<usize>) -> R<usize> {
        let start = self.i;
        loop {
            let Some(&c) = self.s.get(self.i) else {
                self.span(start, false, label)?;
                return Err(Stop::More);
            };
            let len = self.i - start;
            match c {
                b'"' if len > 0 => {
                    let end = self.span(start, true, label)?;
                    self.i += 1;
                    return Ok(end);
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

    /// With a source: whether the literal typed from `start` is a word span of it
    /// (`whole`) or the start of one. A label lies within one item of a list, at or
    /// after its `from` (see [`label_items`]). Returns the end of the first such span.
    fn span(&self, start: usize, whole: bool, label: Option<usize>) -> R<usize> {
        let Some(src) = &self.g.source else {
            return Ok(0);
        };
        let typed = &self.s[start..self.i];
        let no = || bad("the text is not a span of the request");
        if typed.len() > src.len() || (whole && typed.ends_with(b" ")) {
            return no();
        }
        let word = |at: usize| src.get(at).is_some_and(|b| b.is_ascii_alphanumeric());
        let ranges = match label {
            Some(from) => label_items(src, from),
            None => vec![(0, src.len())],
        };
        ranges
            .into_iter()
            .flat_map(|(lo, hi)| {
                (lo..(hi + 1).saturating_sub(typed.len())).filter(move |&at| at + typed.len() <= hi)
            })
            .find(|&at| {
                let end = at + typed.len();
                src[at..end] == *typed
                    && (at == 0 || !word(at - 1) || !word(at))
                    && (!whole || end == 0 || !word(end - 1) || !word(end))
            })
            .map(|at| at + typed.len())
            .map_or_else(no, Ok)
    }
}

/// The items a list of labels in `src` may be, from byte `from` on: the stretches
/// between commas, other punctuation and the word "or", trimmed of spaces. Where the
/// request holds a list ("a, b or c": items joined by commas and "or"), only the items
/// of such lists, up to the one after their last "or", so that the words around a
/// list ("thanks", "for me") are not labels.
fn label_items(src: &[u8], from: usize) -> Vec<(usize, usize)> {
    // Items, each with the separator that follows it: b',', b'o' ("or") or another.
    let mut items: Vec<((usize, usize), u8)> = Vec::new();
    let trim = |lo: usize, hi: usize| {
        let (mut a, mut b) = (lo, hi);
        while a < b && src[a] == b' ' {
            a += 1;
        }
        while b > a && src[b - 1] == b' ' {
            b -= 1;
        }
        (a, b)
    };
    let (mut lo, mut i) = (from, from);
    while i < src.len() {
        let c = src[i];
        let or = c == b'o'
            && src.get(i + 1) == Some(&b'r')
            && (i == 0 || !src[i - 1].is_ascii_alphanumeric())
            && !src.get(i + 2).is_some_and(|b| b.is_ascii_alphanumeric());
        if matches!(c, b',' | b'?' | b'!' | b';' | b':' | b'.' | b'"') || or {
            items.push((trim(lo, i), if or { b'o' } else { c }));
            i += if or { 2 } else { 1 };
            lo = i;
        } else {
            i += 1;
        }
    }
    items.push((trim(lo, src.len()), b'.'));
    // Lists: runs of items joined by commas and "or", cut after the last "or".
    let mut listed = vec![false; items.len()];
    let mut start = 0;
    for k in 0..items.len() {
        let joined = matches!(items[k].1, b',' | b'o');
        if !joined {
            if let Some(last_or) = (start..k).rev().find(|&j| items[j].1 == b'o') {
                listed[start..=last_or + 1]
                    .iter_mut()
                    .for_each(|x| *x = true);
            }
            start = k + 1;
        }
    }
    let any_list = listed.iter().any(|x| *x);
    items
        .into_iter()
        .zip(listed)
        .filter(|(((a, b), _), l)| a < b && (*l || !any_list))
        .map(|((r, _), _)| r)
        .collect()
}

#[cfg(test)]
mod tests;
