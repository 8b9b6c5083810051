//! Checks that a page stands alone: every `src`/`href` is a `data:` URI, an anchor
//! of the page, or a file next to it; no script element and no external resource
//! (`url(...)`, `@import`, a network address in an attribute).

use std::collections::HashSet;
use std::path::Path;

/// The values of every `name="..."` attribute in `html`.
fn attributes<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// What is wrong with the page `html` that lives in `dir` (empty when nothing is):
/// each problem names the reference.
pub fn page_problems(html: &str, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let lower = html.to_ascii_lowercase();
    if lower.contains("<script") {
        problems.push("a <script> element".to_string());
    }
    for bad in ["url(", "@import", "<link", "<iframe", "<object", "<embed"] {
        if lower.contains(bad) {
            problems.push(format!("an external resource construct `{bad}`"));
        }
    }
    let ids: HashSet<&str> = attributes(html, "id").into_iter().collect();
    for name in ["src", "href", "xlink:href", "action", "poster", "srcset"] {
        for value in attributes(html, name) {
            if value.starts_with("data:") {
                continue;
            }
            if let Some(anchor) = value.strip_prefix('#') {
                if !ids.contains(anchor) {
                    problems.push(format!("{name}=\"{value}\": no element has this id"));
                }
                continue;
            }
            if value.contains("://") || value.starts_with("//") || value.contains(':') {
                problems.push(format!("{name}=\"{value}\": an external address"));
                continue;
            }
            let file = value.split(['#', '?']).next().unwrap_or(value);
            if file.starts_with('/') || file.split('/').any(|p| p == "..") {
                problems.push(format!("{name}=\"{value}\": outside the page's directory"));
            } else if !dir.join(file).is_file() {
                problems.push(format!(
                    "{name}=\"{value}\": no such file next to the page ({})",
                    dir.join(file).display()
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let ok = r##"<a href="#x"></a><p id="x"></p><img src="data:image/png;base64,AA=="><img src="a.png">"##;
        assert!(page_problems(ok, dir.path()).is_empty());
        let bad = r##"<a href="#nope"></a><img src="b.png"><img src="https://e.com/i.png"><script src="x.js"></script>"##;
        let p = page_problems(bad, dir.path());
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
