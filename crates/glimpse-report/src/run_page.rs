//! The page of one or several training runs: a summary, the loss of each objective,
//! learning rate, throughput and gradient norm, every validation metric over
//! updates, the resume points and checkpoints, and the recipes. Several runs share
//! each plot, one colour per run, so an ablation reads off one page.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::html::{escape, table, Page};
use crate::run::RunData;
use crate::svg::{color, fmt_num, line_plot, Marker, Plot, Series};

/// Update fields plotted in "Schedule and throughput" rather than with the losses.
const SCHEDULE: [(&str, &str); 3] = [
    ("lr", "learning rate"),
    ("samples_per_s", "samples/s"),
    ("grad_norm", "gradient norm (before clipping)"),
];

fn plot(
    runs: &[RunData],
    title: &str,
    pick: impl Fn(&RunData) -> Option<&Vec<(f64, f64)>>,
) -> String {
    let series = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            pick(r).map(|pts| Series {
                name: r.name.clone(),
                color: i,
                points: pts.clone(),
            })
        })
        .collect();
    let markers = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.resumes.iter().map(move |m| Marker {
                x: m.step as f64,
                label: format!("{} resumed at update {}", r.name, m.step),
                color: i,
            })
        })
        .collect();
    line_plot(&Plot {
        title: title.to_string(),
        x_label: "update".into(),
        series,
        markers,
    })
}

fn plots(items: Vec<String>) -> String {
    format!("<div class=\"plots\">{}</div>", items.concat())
}

fn legend(runs: &[RunData]) -> String {
    let mut out = String::from("<p class=\"legend\">");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            out,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{}</span>",
            color(i),
            escape(&r.name)
        );
    }
    out.push_str("</p>");
    out
}

fn last(pts: Option<&Vec<(f64, f64)>>) -> String {
    pts.and_then(|p| p.last())
        .map(|p| fmt_num(p.1))
        .unwrap_or_else(|| "–".into())
}

fn summary(runs: &[RunData]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let loss = r.updates.get("loss");
            let min = loss
                .and_then(|p| p.iter().map(|x| x.1).reduce(f64::min))
                .map(fmt_num)
                .unwrap_or_else(|| "–".into());
            let rate = r.updates.get("samples_per_s");
            vec![
                format!(
                    "<i class=\"sw\" style=\"background:{}\"></i>{}",
                    color(i),
                    escape(&r.name)
                ),
                escape(&r.dir.display().to_string()),
                r.last_step.to_string(),
                last(loss),
                min,
                last(rate),
                r.validation.len().to_string(),
                r.resumes.len().to_string(),
                r.checkpoints.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "run",
            "directory",
            "last update",
            "last loss",
            "lowest loss",
            "samples/s",
            "validation metrics",
            "resumes",
            "checkpoints",
        ],
        &rows,
    )
}

fn resume_points(runs: &[RunData]) -> String {
    let mut out = String::new();
    for r in runs {
        let _ = write!(out, "<h3>{}</h3>", escape(&r.name));
        if r.resumes.is_empty() {
            out.push_str("<p class=\"muted\">Ran without a resume (or was logged before resumes were recorded).</p>");
        } else {
            let rows: Vec<Vec<String>> = r
                .resumes
                .iter()
                .map(|m| {
                    vec![
                        m.step.to_string(),
                        m.epoch.to_string(),
                        m.position.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["resumed at update", "epoch", "sample of the epoch"],
                &rows,
            ));
        }
        if r.checkpoints.is_empty() {
            out.push_str("<p class=\"muted\">No checkpoint on disk.</p>");
        } else {
            let list: Vec<String> = r.checkpoints.iter().map(u64::to_string).collect();
            let _ = write!(
                out,
                "<p>Checkpoints on disk at updates {} (latest: <code>{}</code>); \
                 <code>glimpse train --resume {}</code> continues from the latest.</p>",
                list.join(", "),
                escape(r.latest.as_deref().unwrap_or("none")),
                escape(&r.dir.display().to_string())
            );
        }
    }
    out
}

fn recipes(runs: &[RunData]) -> String {
    let mut out = String::new();
    let first: BTreeSet<&str> = runs[0]
        .recipe
        .as_deref()
        .map(|t| t.lines().collect())
        .unwrap_or_default();
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(out, "<h3>{}</h3>", escape(&r.name));
        let Some(text) = &r.recipe else {
            out.push_str("<p class=\"muted\">No recipe.toml in this run.</p>");
            continue;
        };
        if i > 0 && !first.is_empty() {
            let differs: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !first.contains(l))
                .collect();
            if differs.is_empty() {
                let _ = write!(
                    out,
                    "<p>Same lines as {}'s recipe.</p>",
                    escape(&runs[0].name)
                );
            } else {
                let _ = write!(
                    out,
                    "<p>Lines that differ from {}'s recipe:</p><pre>{}</pre>",
                    escape(&runs[0].name),
                    escape(&differs.join("\n"))
                );
            }
        }
        let _ = write!(
            out,
            "<details{}><summary>recipe.toml</summary><pre>{}</pre></details>",
            if i == 0 { " open" } else { "" },
            escape(text)
        );
    }
    out
}

/// The HTML page of `runs` (one, or several overlaid).
pub fn run_page(runs: &[RunData]) -> String {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let title = match runs {
        [one] => format!("Training run {}", one.name),
        _ => format!("{} training runs", runs.len()),
    };
    let mut page = Page::new(&title, &names.join(" · "));
    page.section("Summary", "", legend(runs) + &summary(runs));
    let warnings: Vec<&String> = runs.iter().flat_map(|r| &r.warnings).collect();
    if !warnings.is_empty() {
        let items: String = warnings
            .iter()
            .map(|w| format!("<li>{}</li>", escape(w)))
            .collect();
        page.section("Warnings", "warn", format!("<ul>{items}</ul>"));
    }

    let mut loss_keys: BTreeSet<&str> = BTreeSet::new();
    for r in runs {
        loss_keys.extend(
            r.updates
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "loss" && !SCHEDULE.iter().any(|s| s.0 == *k)),
        );
    }
    let mut items = vec![plot(runs, "total loss", |r| r.updates.get("loss"))];
    for k in &loss_keys {
        items.push(plot(runs, &format!("loss: {k}"), |r| r.updates.get(*k)));
    }
    page.section(
        "Loss per objective",
        "",
        "<p class=\"muted\">Per logged update; dashed lines mark resumes.</p>".to_string()
            + &plots(items),
    );

    let items = SCHEDULE
        .iter()
        .map(|(k, title)| plot(runs, title, |r| r.updates.get(*k)))
        .collect();
    page.section("Schedule and throughput", "", plots(items));

    let mut val_keys: BTreeSet<&str> = BTreeSet::new();
    for r in runs {
        val_keys.extend(r.validation.keys().map(String::as_str));
    }
    // A metric with one value throughout (a count of images, say) is listed, not drawn.
    let constant = |k: &str| {
        let mut values = runs
            .iter()
            .filter_map(|r| r.validation.get(k))
            .flatten()
            .map(|p| p.1);
        let first = values.next();
        let n = 1 + values.clone().count();
        n > 1 && first.is_some_and(|f| values.all(|v| v == f))
    };
    let body = if val_keys.is_empty() {
        "<p class=\"muted\">No validation in the log (the recipe's <code>run.val_every</code> was not reached).</p>".to_string()
    } else {
        let mut body = plots(
            val_keys
                .iter()
                .filter(|k| !constant(k))
                .map(|k| plot(runs, k, |r| r.validation.get(*k)))
                .collect(),
        );
        let same: Vec<String> = val_keys
            .iter()
            .filter(|k| constant(k))
            .filter_map(|k| {
                let v = runs.iter().find_map(|r| r.validation.get(*k))?.first()?.1;
                Some(format!("<code>{}</code> = {}", escape(k), fmt_num(v)))
            })
            .collect();
        if !same.is_empty() {
            let _ = write!(
                body,
                "<p>The same at every validation: {}.</p>",
                same.join(", ")
            );
        }
        body
    };
    page.section("Validation", "", body);
    page.section("Resume points and checkpoints", "", resume_points(runs));
    page.section("Recipe", "", recipes(runs));
    page.finish()
}
