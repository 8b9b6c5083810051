//! The page of an evaluation: the figures, then the evidence behind them (see
//! [`glimpse_eval::evidence`]): retrieval queries with their top-5 images, captions
//! beside their images with each attribute marked right or wrong, VQA accuracy per
//! question type with wrong answers and their images, the zero-shot confusion
//! matrix. Images are embedded as `data:` URIs, so the page is one file.
//!
//! Other evaluations (CapFilt's kept and removed captions, a planner's task graphs)
//! add their evidence as a [`PageSection`] passed to [`eval_page`].

use std::fmt::Write as _;

use glimpse_eval::evidence::{Evidence, TaskEvidence, Thumbnail};
use glimpse_eval::metrics::Judgement;
use glimpse_eval::{EvalReport, Metrics};

use crate::html::{data_uri, escape, table, Page};
use crate::svg::fmt_num;

/// A section another evaluation contributes to a page.
pub trait PageSection {
    fn title(&self) -> String;
    /// The section's HTML; text in it must already be escaped
    /// ([`crate::html::escape`]), images embedded ([`crate::html::data_uri`]).
    fn body(&self) -> String;
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// An `<img>` of a sample's thumbnail, or a note that it is missing.
fn image(ev: &Evidence, key: &str, caption: &str, hit: bool) -> String {
    thumbnail(ev.images.get(key), key, caption, hit)
}

/// A thumbnail (or a note that it is missing) with `caption` (HTML) under it, framed
/// green when `hit`.
pub(crate) fn thumbnail(t: Option<&Thumbnail>, key: &str, caption: &str, hit: bool) -> String {
    let class = if hit { "thumb hit" } else { "thumb" };
    match t {
        Some(t) => {
            // Small images are shown at 72 px or more, pixels kept sharp by the style.
            let scale = (72.0 / f64::from(t.width.max(t.height).max(1))).max(1.0);
            format!(
                "<div class=\"{class}\"><img src=\"{}\" width=\"{:.0}\" height=\"{:.0}\" alt=\"{}\">{}</div>",
                data_uri(t.mime, &t.bytes),
                f64::from(t.width) * scale,
                f64::from(t.height) * scale,
                escape(key),
                caption
            )
        }
        None => format!(
            "<div class=\"{class}\"><span class=\"muted\">{} (no image)</span>{caption}</div>",
            escape(key)
        ),
    }
}

fn figures(r: &EvalReport) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |k: &str, v: String| rows.push(vec![escape(k), v]);
    match &r.metrics {
        Metrics::Retrieval(m) => {
            for (name, d) in [("image→text", &m.i2t), ("text→image", &m.t2i)] {
                row(&format!("{name} R@1"), pct(d.r1));
                row(&format!("{name} R@5"), pct(d.r5));
                row(&format!("{name} R@10"), pct(d.r10));
                row(&format!("{name} median rank"), fmt_num(d.median_rank));
            }
            row("mean recall", pct(m.r_mean));
            row("images / texts", format!("{} / {}", m.n_images, m.n_texts));
            if let Some(k) = m.rerank {
                row("re-ranked by ITM", format!("top {k}"));
            }
        }
        Metrics::ZeroShot(m) => {
            row("top-1 accuracy", pct(m.accuracy));
            row("mean per-class accuracy", pct(m.mean_per_class_accuracy));
            row("labels", m.n_labels.to_string());
            row("template", escape(&m.template));
        }
        Metrics::Caption(m) => {
            row("BLEU-4", format!("{:.4}", m.bleu4));
            row("CIDEr-D", format!("{:.4}", m.cider));
            if let Some(a) = &m.attributes {
                row(
                    "every attribute right (single-object images)",
                    format!("{} of {}", pct(a.all_correct), a.n_images),
                );
                for (name, t) in [
                    ("shape", &a.shape),
                    ("color", &a.color),
                    ("size", &a.size),
                    ("position", &a.position),
                    ("count", &a.count),
                    ("background", &a.background),
                ] {
                    row(
                        &format!("{name}: right / wrong / not said"),
                        format!("{} / {} / {}", t.correct, t.wrong, t.not_mentioned),
                    );
                }
            }
        }
        Metrics::Vqa(m) => {
            row("exact-match accuracy", pct(m.accuracy));
            row("questions", m.n_questions.to_string());
        }
    }
    row("images evaluated", r.samples.to_string());
    row("skipped", r.skipped.to_string());
    let mut out = table(&["figure", "value"], &rows);
    if !r.skipped_reasons.is_empty() {
        let items: String = r
            .skipped_reasons
            .iter()
            .map(|s| format!("<li>{}</li>", escape(s)))
            .collect();
        let _ = write!(
            out,
            "<details><summary>first {} reasons for skipping</summary><ul>{items}</ul></details>",
            r.skipped_reasons.len()
        );
    }
    out
}

fn retrieval(ev: &Evidence, queries: &[glimpse_eval::evidence::RetrievalQuery]) -> String {
    let mut out = String::from(
        "<p>Each text query with the five images it ranked first; the right image has a \
         green frame. Queries are spread over the data, followed by misses.</p><div class=\"grid\">",
    );
    for q in queries {
        let found = q.top.iter().any(|(k, _)| *k == q.truth);
        let verdict = if found {
            format!("<span class=\"ok\">right image at rank {}</span>", q.rank)
        } else {
            format!(
                "<span class=\"bad\">right image not in the top 5 (rank {})</span>",
                q.rank
            )
        };
        let _ = write!(
            out,
            "<div class=\"card\"><b>“{}”</b><br>{verdict}<div class=\"thumbs\">",
            escape(&q.text)
        );
        for (i, (k, s)) in q.top.iter().enumerate() {
            out.push_str(&image(
                ev,
                k,
                &format!("#{} {}", i + 1, fmt_num(f64::from(*s))),
                *k == q.truth,
            ));
        }
        if !found {
            out.push_str(&image(ev, &q.truth, "right image", true));
        }
        out.push_str("</div></div>");
    }
    out.push_str("</div>");
    out
}

fn chip(name: &str, truth: &str, j: Judgement) -> String {
    let (class, mark) = match j {
        Judgement::Correct => ("chip correct", "✓"),
        Judgement::Wrong => ("chip wrong", "✗"),
        Judgement::NotMentioned => ("chip", "–"),
    };
    format!(
        "<span class=\"{class}\" title=\"{}\">{mark} {}: {}</span>",
        match j {
            Judgement::Correct => "stated right",
            Judgement::Wrong => "stated wrong",
            Judgement::NotMentioned => "not stated",
        },
        escape(name),
        escape(truth)
    )
}

fn captions(ev: &Evidence, items: &[glimpse_eval::evidence::CaptionEvidence]) -> String {
    let mut out = String::from(
        "<p>Generated captions beside their images and references. On single-object \
         synthetic images each attribute shows the record's true value: ✓ stated right, \
         <span class=\"bad\">✗ stated wrong</span>, – not stated.</p><div class=\"grid\">",
    );
    for c in items {
        let verdict = match c.all_correct {
            Some(true) => "<span class=\"ok\">every attribute right</span>",
            Some(false) => "<span class=\"bad\">wrong or incomplete</span>",
            None => "",
        };
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"thumbs\">{}<div><b>{}</b><br>{verdict}<br>",
            image(ev, &c.key, "", false),
            escape(&c.caption)
        );
        if c.all_correct.is_none() {
            out.push_str(
                "<span class=\"muted\">attributes not checked (not a single-object synthetic record)</span>",
            );
        }
        for a in &c.attributes {
            out.push_str(&chip(a.name, &a.truth, a.judgement));
        }
        for m in &c.mistakes {
            let _ = write!(out, "<br><span class=\"bad\">{}</span>", escape(m));
        }
        let refs: String = c
            .references
            .iter()
            .map(|r| format!("<li>{}</li>", escape(r)))
            .collect();
        let _ = write!(
            out,
            "<div class=\"muted\">references:<ul>{refs}</ul></div></div></div></div>"
        );
    }
    out.push_str("</div>");
    out
}

fn vqa(
    ev: &Evidence,
    by_type: &[glimpse_eval::evidence::QuestionTypeRow],
    wrong: &[glimpse_eval::evidence::VqaEvidence],
) -> String {
    let rows: Vec<Vec<String>> = by_type
        .iter()
        .map(|t| {
            vec![
                escape(&t.question_type),
                t.total.to_string(),
                t.correct.to_string(),
                pct(t.correct as f64 / t.total.max(1) as f64),
                format!(
                    "<svg width=\"120\" height=\"10\"><rect width=\"120\" height=\"10\" fill=\"#eef1f5\"/><rect width=\"{:.0}\" height=\"10\" fill=\"#0072b2\"/></svg>",
                    120.0 * t.correct as f64 / t.total.max(1) as f64
                ),
            ]
        })
        .collect();
    let mut out = String::from("<h3>Accuracy per question type</h3>");
    out.push_str(&table(
        &["type", "questions", "right", "accuracy", ""],
        &rows,
    ));
    let _ = write!(
        out,
        "<h3>Wrong answers ({} shown)</h3><div class=\"grid\">",
        wrong.len()
    );
    if wrong.is_empty() {
        out.push_str("<p class=\"ok\">No wrong answer.</p>");
    }
    for w in wrong {
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"thumbs\">{}<div>{}<br><span class=\"muted\">{}</span><br>\
             answered <span class=\"bad\">{}</span>, accepted: {}</div></div></div>",
            image(ev, &w.key, "", false),
            escape(&w.question),
            escape(&w.question_type),
            escape(&w.prediction),
            escape(&w.answers.join(" | "))
        );
    }
    out.push_str("</div>");
    out
}

fn confusion(m: &glimpse_eval::evidence::ConfusionMatrix) -> String {
    let n = m.labels.len();
    let cell = if n > 30 { 9.0 } else { 16.0 };
    let label_w = 8.0
        + 6.5
            * m.labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(1) as f64;
    let size = label_w + cell * n as f64 + 8.0;
    let max = m.counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut out = format!(
        "<p>Rows: true label; columns: predicted label (same order). Darker is more images; \
         off the diagonal are mistakes (red).</p><svg width=\"{size:.0}\" height=\"{size:.0}\" role=\"img\" aria-label=\"confusion matrix\">"
    );
    for (i, l) in m.labels.iter().enumerate() {
        let y = label_w + cell * i as f64;
        let _ = write!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" style=\"font-size:{}px\">{}</text>\
             <text transform=\"translate({:.1},{:.0}) rotate(-90)\" style=\"font-size:{}px\">{}</text>",
            label_w - 4.0,
            y + cell * 0.8,
            if cell < 12.0 { 8 } else { 11 },
            escape(l),
            y + cell * 0.8,
            label_w - 4.0,
            if cell < 12.0 { 8 } else { 11 },
            escape(l)
        );
    }
    for (t, row) in m.counts.iter().enumerate() {
        for (p, &c) in row.iter().enumerate().filter(|(_, c)| **c > 0) {
            let a = 0.15 + 0.85 * c as f64 / max;
            let fill = if t == p { "0,114,178" } else { "213,94,0" };
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgba({fill},{a:.2})\"><title>{} → {}: {c}</title></rect>",
                label_w + cell * p as f64,
                label_w + cell * t as f64,
                escape(&m.labels[t]),
                escape(&m.labels[p])
            );
        }
    }
    let _ = write!(
        out,
        "<rect x=\"{label_w:.0}\" y=\"{label_w:.0}\" width=\"{:.0}\" height=\"{:.0}\" fill=\"none\" stroke=\"#c5ccd6\"/></svg>",
        cell * n as f64,
        cell * n as f64
    );
    out
}

fn zero_shot(
    ev: &Evidence,
    m: &glimpse_eval::evidence::ConfusionMatrix,
    examples: &[glimpse_eval::evidence::ZeroShotExample],
) -> String {
    let mut out = confusion(m);
    let wrong = examples.iter().filter(|e| e.truth != e.predicted).count();
    let _ = write!(
        out,
        "<h3>Examples: {wrong} misclassified shown first, then right ones</h3>"
    );
    if wrong == 0 {
        out.push_str("<p class=\"ok\">No misclassified image.</p>");
    }
    out.push_str("<div class=\"thumbs\" style=\"flex-wrap:wrap\">");
    for e in examples {
        let said = if e.truth == e.predicted {
            format!("<span class=\"ok\">said {}</span>", escape(&e.predicted))
        } else {
            format!("<span class=\"bad\">said {}</span>", escape(&e.predicted))
        };
        out.push_str(&image(
            ev,
            &e.key,
            &format!("{}<br>{said}", escape(&e.truth)),
            e.truth == e.predicted,
        ));
    }
    out.push_str("</div>");
    out
}

/// The page of `report`, with the evidence it carries (evaluate with
/// `EvalOptions::evidence` set) and any `extra` sections.
pub fn eval_page(report: &EvalReport, extra: &[&dyn PageSection]) -> String {
    let title = format!("Evaluation: {}", report.task);
    let subtitle = format!("model {} · data {}", report.model, report.data);
    let mut page = Page::new(&title, &subtitle);
    page.section("Figures", "", figures(report));
    match &report.evidence {
        None => page.section(
            "Evidence",
            "warn",
            "<p>This evaluation kept no examples (it ran without evidence).</p>".into(),
        ),
        Some(ev) => match &ev.task {
            TaskEvidence::Retrieval { queries } => {
                page.section("Queries and their top 5", "", retrieval(ev, queries))
            }
            TaskEvidence::Caption { items } => {
                page.section("Captions beside their images", "", captions(ev, items))
            }
            TaskEvidence::Vqa { by_type, wrong } => {
                page.section("Answers by question type", "", vqa(ev, by_type, wrong))
            }
            TaskEvidence::ZeroShot {
                confusion,
                examples,
            } => page.section("Confusion matrix", "", zero_shot(ev, confusion, examples)),
            TaskEvidence::None => {}
        },
    }
    for s in extra {
        page.section(&s.title(), "", s.body());
    }
    page.finish()
}
