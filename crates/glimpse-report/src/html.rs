//! HTML building blocks: escaping, `data:` URIs, and [`Page`], which assembles a
//! self-contained document (one inline style sheet, no scripts, no external
//! resources) from sections with in-page anchors.

use std::fmt::Write as _;

/// `text` with `& < > " '` replaced by entities, safe in element content and in
/// quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `data:` URI holding `bytes` of type `mime`.
pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64(bytes))
}

/// An anchor id made of `[a-z0-9-]` from any text.
pub fn anchor(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2433;background:#f6f7f9}\
header{background:#1d2433;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}\
header p{margin:4px 0 0;color:#c9d1e0}nav{padding:8px 24px;background:#e9edf3}\
nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}main{padding:8px 24px 40px}\
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 16px;margin:14px 0}\
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}\
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #e3e7ee;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f0f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #dde2ea;border-radius:6px;padding:8px;max-width:560px}\
.thumbs{display:flex;gap:6px;align-items:flex-start}.thumb{text-align:center;font-size:11px;color:#555}\
.thumb img{display:block;border:3px solid #ccd3dd;image-rendering:pixelated}.thumb.hit img{border-color:#16a34a}\
.ok{color:#15803d}.bad{color:#b91c1c;font-weight:600}.muted{color:#667085}.warn{background:#fff7e6;border-color:#f5c26b}\
.chip{display:inline-block;border-radius:10px;padding:0 7px;margin:1px 2px;font-size:12px;background:#eef1f5}\
.chip.wrong{background:#fde2e2;color:#991b1b}.chip.correct{background:#dcfce7;color:#166534}\
pre{background:#f3f5f8;padding:8px;overflow:auto;max-height:420px;font-size:12px}\
.plots{display:flex;flex-wrap:wrap;gap:10px}.plot{border:1px solid #e3e7ee;border-radius:4px;background:#fff}\
svg text{font:11px system-ui,sans-serif;fill:#344054}.legend span{margin-right:14px}.sw{display:inline-block;width:14px;height:4px;margin-right:4px;vertical-align:middle}";

/// A self-contained HTML document: a header, a navigation bar over the sections, the
/// sections in order.
pub struct Page {
    title: String,
    subtitle: String,
    sections: Vec<Section>,
}

struct Section {
    id: String,
    class: String,
    title: String,
    body: String,
}

impl Page {
    pub fn new(title: &str, subtitle: &str) -> Self {
        Page {
            title: title.to_string(),
            subtitle: subtitle.to_string(),
            sections: Vec::new(),
        }
    }

    /// Adds a section titled `title` whose body is the HTML `body`; `class` is added
    /// to the section element (e.g. `warn`). Its anchor is `#` + [`anchor`] of the
    /// title, made unique.
    pub fn section(&mut self, title: &str, class: &str, body: String) {
        let mut id = anchor(title);
        if id.is_empty() {
            id = "section".into();
        }
        let base = id.clone();
        let mut n = 2;
        while self.sections.iter().any(|s| s.id == id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        self.sections.push(Section {
            id,
            class: class.to_string(),
            title: title.to_string(),
            body,
        });
    }

    /// The document.
    pub fn finish(self) -> String {
        let mut out =
            String::with_capacity(4096 + self.sections.iter().map(|s| s.body.len()).sum::<usize>());
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{}</title><style>{STYLE}</style></head><body>\n<header><h1>{}</h1><p>{}</p></header>\n<nav>",
            escape(&self.title),
            escape(&self.title),
            escape(&self.subtitle)
        );
        for s in &self.sections {
            let _ = write!(out, "<a href=\"#{}\">{}</a>", s.id, escape(&s.title));
        }
        out.push_str("</nav>\n<main>\n");
        for s in &self.sections {
            let _ = write!(
                out,
                "<section id=\"{}\" class=\"{}\"><h2>{}</h2>\n{}\n</section>\n",
                s.id,
                escape(&s.class),
                escape(&s.title),
                s.body
            );
        }
        out.push_str("</main></body></html>\n");
        out
    }
}

/// An HTML table: escaped header cells, and rows of cells that are already HTML.
/// Cells that parse as numbers are right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let numeric = cell
                .trim_end_matches('%')
                .replace(',', "")
                .parse::<f64>()
                .is_ok();
            if numeric {
                let _ = write!(out, "<td class=\"num\">{cell}</td>");
            } else {
                let _ = write!(out, "<td>{cell}</td>");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_defuses_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw}");
        }
    }

    #[test]
    fn anchors_are_unique_and_plain() {
        assert_eq!(anchor("Loss per objective (ITC)"), "loss-per-objective-itc");
        let mut p = Page::new("t", "s");
        p.section("Loss", "", String::new());
        p.section("Loss", "", String::new());
        let html = p.finish();
        assert!(html.contains("id=\"loss\"") && html.contains("id=\"loss-2\""));
        assert!(html.contains("href=\"#loss-2\""));
    }
}
