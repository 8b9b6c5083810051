//! The page of a CapFilt filter-quality evaluation (`glimpse eval --task capfilt
//! --report DIR`): removed and kept web captions per corruption kind, the threshold
//! sweep as a plot, then the evidence: for every corruption kind, for the clean web
//! captions and for the synthetic captions, the captions the filter removed and those
//! it kept, each beside its image with its ITM probability (and, for a corrupted
//! caption, the clean caption it was made from).

use std::fmt::Write as _;

use glimpse_capfilt::quality::{ratio, Example, Group, Quality};

use crate::eval_page::thumbnail;
use crate::html::{escape, table, Page};
use crate::svg::{line_plot, Marker, Plot, Series};

fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

fn figures(q: &Quality) -> String {
    let mut rows: Vec<Vec<String>> = q
        .kinds
        .iter()
        .chain(std::iter::once(&q.corrupted))
        .map(|k| {
            vec![
                format!("corrupted: {}", escape(&k.kind)),
                k.n.to_string(),
                pct(ratio(k.removed, k.n)),
                pct(ratio(k.n - k.removed, k.n)),
            ]
        })
        .collect();
    rows.push(vec![
        "clean".into(),
        q.clean.n.to_string(),
        pct(ratio(q.clean.n - q.clean.kept, q.clean.n)),
        pct(q.clean_kept()),
    ]);
    rows.push(vec![
        "synthetic".into(),
        q.synthetic.n.to_string(),
        pct(ratio(q.synthetic.n - q.synthetic.kept, q.synthetic.n)),
        pct(ratio(q.synthetic.kept, q.synthetic.n)),
    ]);
    let mut out = format!(
        "<p>{} samples · captioner <code>{}</code> · filter <code>{}</code> · threshold {}</p>",
        q.samples,
        escape(&q.captioner),
        escape(&q.filter),
        q.threshold
    );
    if q.unlabelled > 0 {
        let _ = write!(
            out,
            "<p class=\"muted\">{} samples carry no noise marks and are left out.</p>",
            q.unlabelled
        );
    }
    out.push_str(&table(&["captions", "n", "removed", "kept"], &rows));
    out.push_str(
        "<p class=\"muted\">A good filter removes the corrupted web captions and keeps the \
         clean ones.</p>",
    );
    out
}

fn sweep(q: &Quality) -> String {
    let points = |f: fn(&glimpse_capfilt::quality::SweepPoint) -> f64| {
        q.sweep
            .iter()
            .map(|p| (p.threshold, 100.0 * f(p)))
            .filter(|(_, y)| y.is_finite())
            .collect::<Vec<_>>()
    };
    let plot = line_plot(&Plot {
        title: "web captions (%) by ITM threshold".into(),
        x_label: "threshold".into(),
        series: vec![
            Series {
                name: "corrupted removed".into(),
                color: 1,
                points: points(|p| p.corrupted_removed),
            },
            Series {
                name: "clean kept".into(),
                color: 0,
                points: points(|p| p.clean_kept),
            },
        ],
        markers: vec![Marker {
            x: q.threshold,
            label: "this run".into(),
            color: 6,
        }],
    });
    let rows: Vec<Vec<String>> = q
        .sweep
        .iter()
        .map(|p| {
            vec![
                format!("{:.2}", p.threshold),
                pct(p.corrupted_removed),
                pct(p.clean_kept),
            ]
        })
        .collect();
    format!(
        "<div class=\"plots\"><div class=\"plot\">{plot}</div></div>{}",
        table(&["threshold", "corrupted removed", "clean kept"], &rows)
    )
}

fn example(e: &Example, right: bool) -> String {
    let verdict = match (e.kept, right) {
        (true, true) => "<span class=\"ok\">kept</span>",
        (false, true) => "<span class=\"ok\">removed</span>",
        (true, false) => "<span class=\"bad\">kept</span>",
        (false, false) => "<span class=\"bad\">removed</span>",
    };
    let itm = e
        .itm
        .map_or_else(|| "unscored (blank)".to_string(), |p| format!("ITM {p:.3}"));
    let mut text = format!("<b>“{}”</b><br>{verdict} · {itm}", escape(&e.text));
    if let Some(c) = &e.clean_caption {
        let _ = write!(
            text,
            "<br><span class=\"muted\">clean: “{}”</span>",
            escape(c)
        );
    }
    format!(
        "<div class=\"card\"><div class=\"thumbs\">{}<div>{text}</div></div></div>",
        thumbnail(e.thumbnail.as_ref(), &e.key, "", right)
    )
}

/// A group's examples: the filter's right verdicts, then its wrong ones. A corrupted
/// caption is rightly removed; a clean or synthetic one rightly kept (for synthetic
/// captions "right" is the filter's own view: the world has no label for them).
fn group(g: &Group) -> String {
    let corrupted = g.name != "clean" && g.name != "synthetic";
    let (right, wrong) = if corrupted {
        (&g.removed, &g.kept)
    } else {
        (&g.kept, &g.removed)
    };
    let (right_title, wrong_title) = match g.name.as_str() {
        "synthetic" => ("kept", "removed"),
        "clean" => ("kept (right)", "removed (wrong)"),
        _ => ("removed (right)", "kept (missed)"),
    };
    let mut out = String::new();
    for (title, list, ok) in [(right_title, right, true), (wrong_title, wrong, false)] {
        let _ = write!(
            out,
            "<h3>{} {title}: {} shown</h3>",
            escape(&g.name),
            list.len()
        );
        if list.is_empty() {
            out.push_str("<p class=\"muted\">none</p>");
            continue;
        }
        out.push_str("<div class=\"grid\">");
        for e in list.iter() {
            out.push_str(&example(e, ok || g.name == "synthetic"));
        }
        out.push_str("</div>");
    }
    out
}

/// The page of a filter-quality evaluation.
pub fn capfilt_page(q: &Quality) -> String {
    let mut page = Page::new(
        "Evaluation: CapFilt filter quality",
        &format!("output {} · filter {}", q.out, q.filter),
    );
    page.section("Figures", "", figures(q));
    page.section("Threshold sweep", "", sweep(q));
    if q.evidence.is_empty() {
        page.section(
            "Evidence",
            "warn",
            "<p>This evaluation kept no examples.</p>".into(),
        );
    }
    for g in &q.evidence {
        let title = match g.name.as_str() {
            "clean" => "Clean web captions".to_string(),
            "synthetic" => "Synthetic captions".to_string(),
            kind => format!("Corrupted: {kind}"),
        };
        page.section(&title, "", group(g));
    }
    page.finish()
}
