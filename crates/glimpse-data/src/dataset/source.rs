//! Turning the user's one-string data argument into a sorted list of sources.
//!
//! Globs are matched here rather than through a crate: the few rules needed (`*`, `?`,
//! `[...]` within a path component, `**` across directories, hidden files only when
//! the pattern names the dot) fit in a page, and the result must be sorted anyway.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where samples come from; see [`resolve_sources`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A WebDataset tar shard: entries grouped by key (`KEY.png` + `KEY.json`, ...).
    Shard(PathBuf),
    /// One JSON object per line, naming its image file.
    Jsonl(PathBuf),
    /// A COCO captions file (`images` + `annotations`).
    Coco(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Shard(p) | Source::Jsonl(p) | Source::Coco(p) => p,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

fn spec_error(spec: &str, message: impl Into<String>) -> Error {
    Error::config(format!("data source {spec:?}"), message)
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Resolves a data argument into sources:
///
/// - a directory: every `*.tar` under it (recursively, sorted by path) as WebDataset
///   shards; without any, its `annotations.jsonl`, or else every `*.jsonl` under it;
/// - a glob (`*`, `?`, `[...]`, `**`): the matching `.tar` shards and `.jsonl` files;
/// - a `.tar` file: one shard; a `.jsonl` file: one JSONL source;
/// - a `.json` file: COCO captions.
///
/// Errors name the spec: nothing matched, unreadable, unsupported extension.
pub fn resolve_sources(spec: &str) -> Result<Vec<Source>> {
    let spec_t = spec.trim();
    if spec_t.is_empty() {
        return Err(spec_error(spec, "empty data path"));
    }
    if is_glob(spec_t) {
        let files = glob_files(spec_t).map_err(|e| spec_error(spec, e))?;
        let n = files.len();
        let sources: Vec<Source> = files
            .into_iter()
            .filter_map(|p| {
                if has_ext(&p, "tar") {
                    Some(Source::Shard(p))
                } else if has_ext(&p, "jsonl") {
                    Some(Source::Jsonl(p))
                } else {
                    None
                }
            })
            .collect();
        if sources.is_empty() {
            return Err(spec_error(
                spec,
                if n == 0 {
                    "the pattern matches no file".to_string()
                } else {
                    format!("the pattern matches {n} file(s), but no .tar shard or .jsonl file")
                },
            ));
        }
        return Ok(sources);
    }

    let path = Path::new(spec_t);
    let meta = fs::metadata(path).map_err(|e| spec_error(spec, format!("cannot read: {e}")))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, 0, &mut files).map_err(|e| spec_error(spec, e))?;
        files.sort();
        let tars: Vec<Source> = files
            .iter()
            .filter(|p| has_ext(p, "tar"))
            .map(|p| Source::Shard(p.clone()))
            .collect();
        if !tars.is_empty() {
            return Ok(tars);
        }
        let annotations = path.join("annotations.jsonl");
        if annotations.is_file() {
            return Ok(vec![Source::Jsonl(annotations)]);
        }
        let jsonl: Vec<Source> = files
            .iter()
            .filter(|p| has_ext(p, "jsonl"))
            .map(|p| Source::Jsonl(p.clone()))
            .collect();
        if jsonl.is_empty() {
            return Err(spec_error(
                spec,
                "the directory holds no .tar shard and no .jsonl file \
                 (for COCO captions, pass the .json file itself)",
            ));
        }
        return Ok(jsonl);
    }
    if has_ext(path, "tar") {
        Ok(vec![Source::Shard(path.to_path_buf())])
    } else if has_ext(path, "jsonl") {
        Ok(vec![Source::Jsonl(path.to_path_buf())])
    } else if has_ext(path, "json") {
        Ok(vec![Source::Coco(path.to_path_buf())])
    } else {
        Err(spec_error(
            spec,
            "unsupported file type (expected a directory, a glob, or a .tar, .jsonl \
             or COCO .json file)",
        ))
    }
}

/// Symlinked directories are followed, so cycles are cut by depth.
const MAX_DEPTH: usize = 32;

fn read_dir_sorted(dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// All files under `dir`, recursively.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::result::Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: directories nested deeper than {MAX_DEPTH} levels (a symlink cycle?)",
            dir.display()
        ));
    }
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            walk(&p, depth + 1, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Files matching `pattern`, sorted.
pub(crate) fn glob_files(pattern: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let fixed = parts.iter().take_while(|c| !is_glob(c)).count();
    let mut base = PathBuf::from(if absolute { "/" } else { "." });
    for c in &parts[..fixed] {
        base.push(c);
    }
    let mut out = Vec::new();
    if fixed == parts.len() {
        // Unreachable through resolve_sources (the pattern has a wildcard), kept total.
        if base.is_file() {
            out.push(base);
        }
        return Ok(out);
    }
    if !base.is_dir() {
        return Ok(out);
    }
    glob_in(&base, &parts[fixed..], 0, &mut out)?;
    // Relative patterns are walked from ".", whose prefix the user did not write.
    if !absolute {
        for p in &mut out {
            if let Ok(rest) = p.strip_prefix(".") {
                *p = rest.to_path_buf();
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn glob_in(
    dir: &Path,
    parts: &[&str],
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> std::result::Result<(), String> {
    let Some((&head, rest)) = parts.split_first() else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: directories nested deeper than {MAX_DEPTH} levels (a symlink cycle?)",
            dir.display()
        ));
    }
    if head == "**" {
        // Zero directories, then one more level with `**` still pending.
        glob_in(dir, rest, depth, out)?;
        for p in read_dir_sorted(dir)? {
            if p.is_dir() && !is_hidden(&p) {
                glob_in(&p, parts, depth + 1, out)?;
            }
        }
        return Ok(());
    }
    if !is_glob(head) {
        let p = dir.join(head);
        return visit(p, rest, depth, out);
    }
    for p in read_dir_sorted(dir)? {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') && !head.starts_with('.') {
            continue;
        }
        if wildcard_match(head.as_bytes(), name.as_bytes()) {
            visit(p, rest, depth, out)?;
        }
    }
    Ok(())
}

fn visit(
    p: PathBuf,
    rest: &[&str],
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> std::result::Result<(), String> {
    if rest.is_empty() {
        if p.is_file() {
            out.push(p);
        }
        Ok(())
    } else if p.is_dir() {
        glob_in(&p, rest, depth + 1, out)
    } else {
        Ok(())
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Matches one path component against `*`, `?` and `[...]` (`[!...]`/`[^...]`
/// negate, `a-z` ranges). A `[` without its `]` is a literal.
pub(crate) fn wildcard_match(pat: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with backtracking to the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match class_match(&pat[p..], name[n]) {
                Some((true, len)) => Some(p + len),
                Some((false, _)) => None,
                None => (name[n] == b'[').then_some(p + 1),
            },
            Some(&c) => (c == name[n]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                n += 1;
            }
            (None, Some((sp, sn))) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// `class` starts at `[`; returns whether `c` is in it and the class's length, or
/// `None` when the class is unterminated.
fn class_match(class: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(class.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &a = class.get(i)?;
        if a == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if class.get(i + 1) == Some(&b'-') && class.get(i + 2).is_some_and(|&b| b != b']') {
            let b = class[i + 2];
            hit |= a <= c && c <= b;
            i += 3;
        } else {
            hit |= a == c;
            i += 1;
        }
    }
}
