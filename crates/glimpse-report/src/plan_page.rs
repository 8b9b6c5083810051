//! The page of a planner evaluation (`glimpse eval --task plan --report DIR`):
//! TaskBench's figures, exact plans per request kind, then the evidence: requests
//! whose plan differs from the gold one, each with both task graphs drawn side by
//! side (tasks in columns by dependency depth, edges from a task to those that use
//! its result), followed by a few right ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use glimpse_agent::plan::{ArgValue, Plan};
use glimpse_agent::plan_eval::{CaseResult, PlanEvalReport};

use crate::html::{escape, table, Page};

/// Wrong and right requests shown.
pub const WRONG_SHOWN: usize = 24;
pub const RIGHT_SHOWN: usize = 6;

const NODE_W: f64 = 200.0;
const NODE_H: f64 = 46.0;
const GAP_X: f64 = 46.0;
const GAP_Y: f64 = 14.0;
const PAD: f64 = 8.0;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Each task's column: 0 without dependencies, else one past its deepest dependency.
fn levels(plan: &Plan) -> Vec<usize> {
    let mut level = vec![0usize; plan.tasks.len()];
    let index: BTreeMap<usize, usize> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id, i))
        .collect();
    // Dependencies name earlier tasks (the plan validates), so one pass in order
    // suffices; a reference to a missing or later id is drawn in column 0.
    for (i, t) in plan.tasks.iter().enumerate() {
        level[i] = t
            .dep
            .iter()
            .filter_map(|d| index.get(d).filter(|&&j| j < i).map(|&j| level[j] + 1))
            .max()
            .unwrap_or(0);
    }
    level
}

/// The task graph as an inline SVG. `marks[i]` says whether task `i` is right (its
/// name is in the other plan, counted as a multiset): `None` draws it neutral.
pub fn plan_svg(plan: &Plan, marks: &[Option<bool>]) -> String {
    if plan.tasks.is_empty() {
        return "<p class=\"muted\">no tasks</p>".into();
    }
    let level = levels(plan);
    let mut rows_in = BTreeMap::<usize, usize>::new();
    let mut pos = Vec::with_capacity(plan.tasks.len());
    for &l in &level {
        let r = rows_in.entry(l).or_insert(0);
        pos.push((
            PAD + l as f64 * (NODE_W + GAP_X),
            PAD + *r as f64 * (NODE_H + GAP_Y),
        ));
        *r += 1;
    }
    let cols = level.iter().max().map_or(1, |m| m + 1) as f64;
    let rows = rows_in.values().copied().max().unwrap_or(1) as f64;
    let w = 2.0 * PAD + cols * NODE_W + (cols - 1.0) * GAP_X;
    let h = 2.0 * PAD + rows * NODE_H + (rows - 1.0) * GAP_Y;
    let mut out = format!(
        "<svg class=\"plan\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\">"
    );
    let index: BTreeMap<usize, usize> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id, i))
        .collect();
    for (i, t) in plan.tasks.iter().enumerate() {
        for d in &t.dep {
            let Some(&j) = index.get(d) else { continue };
            let (x0, y0) = (pos[j].0 + NODE_W, pos[j].1 + NODE_H / 2.0);
            let (x1, y1) = (pos[i].0, pos[i].1 + NODE_H / 2.0);
            let _ = write!(
                out,
                "<path d=\"M{x0:.1},{y0:.1} C{:.1},{y0:.1} {:.1},{y1:.1} {x1:.1},{y1:.1}\" fill=\"none\" stroke=\"#667085\" stroke-width=\"1.5\"/>\
                 <path d=\"M{x1:.1},{y1:.1} l-7,-4 l0,8 z\" fill=\"#667085\"/>",
                x0 + GAP_X / 2.0,
                x1 - GAP_X / 2.0,
            );
        }
    }
    for (i, t) in plan.tasks.iter().enumerate() {
        let (x, y) = pos[i];
        let (stroke, fill) = match marks.get(i).copied().flatten() {
            Some(true) => ("#16a34a", "#f0fdf4"),
            Some(false) => ("#b91c1c", "#fef2f2"),
            None => ("#98a2b3", "#f8fafc"),
        };
        let args: Vec<String> = t
            .args
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ArgValue::List(items) => format!("[{}]", items.join(", ")),
                    other => other.as_plain(),
                };
                format!("{}: {v}", k.as_str())
            })
            .collect();
        let title = format!("{} {} {}", t.id, t.task, args.join("; "));
        let _ = write!(
            out,
            "<g><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"5\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"600\">{}</text><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&title),
            x + 6.0,
            y + 17.0,
            escape(&clip(&format!("{} {}", t.id, t.task), 32)),
            x + 6.0,
            y + 35.0,
            escape(&clip(&args.join("; "), 34)),
        );
    }
    out.push_str("</svg>");
    out
}

/// For each task of `plan`, whether its name also occurs in `other` (each occurrence
/// of `other` matched once).
fn name_marks(plan: &Plan, other: &Plan) -> Vec<Option<bool>> {
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &other.tasks {
        *left.entry(t.task.as_str()).or_default() += 1;
    }
    plan.tasks
        .iter()
        .map(|t| {
            let n = left.entry(t.task.as_str()).or_default();
            let hit = *n > 0;
            *n = n.saturating_sub(1);
            Some(hit)
        })
        .collect()
}

fn case_card(c: &CaseResult) -> String {
    let mut out = format!(
        "<div class=\"card\" style=\"max-width:none\"><b>“{}”</b> <span class=\"muted\">{}{}</span>",
        escape(&c.request),
        escape(&c.key),
        c.kind
            .as_ref()
            .map(|k| format!(" · {}", escape(k)))
            .unwrap_or_default()
    );
    let verdict = if c.exact {
        "<span class=\"ok\">the plan equals the gold plan</span>".to_string()
    } else if let Some(e) = &c.invalid {
        format!(
            "<span class=\"bad\">the plan does not validate: {}</span>",
            escape(e)
        )
    } else if c.predicted.is_none() {
        "<span class=\"bad\">no plan</span>".to_string()
    } else {
        "<span class=\"bad\">the plan differs</span>".to_string()
    };
    let _ = write!(
        out,
        "<br>{verdict}<div class=\"thumbs\" style=\"flex-wrap:wrap;gap:18px\">"
    );
    let gold = plan_svg(&c.gold, &vec![None; c.gold.tasks.len()]);
    let _ = write!(out, "<div><h3>gold</h3>{gold}</div>");
    match &c.predicted {
        Some(p) => {
            let _ = write!(
                out,
                "<div><h3>predicted</h3>{}</div>",
                plan_svg(p, &name_marks(p, &c.gold))
            );
        }
        None => {
            let _ = write!(
                out,
                "<div><h3>predicted</h3><pre>{}</pre></div>",
                escape(&clip(&c.raw, 600))
            );
        }
    }
    out.push_str("</div></div>");
    out
}

fn figures(r: &PlanEvalReport) -> String {
    let s = &r.scores;
    let rows = vec![
        vec!["requests".into(), s.requests.to_string()],
        vec!["node F1".into(), format!("{:.4}", s.node_f1)],
        vec!["edge F1".into(), format!("{:.4}", s.edge_f1)],
        vec!["argument-name F1".into(), format!("{:.4}", s.arg_name_f1)],
        vec!["argument-value F1".into(), format!("{:.4}", s.arg_value_f1)],
        vec![
            "normalised edit distance".into(),
            format!("{:.4}", s.edit_distance),
        ],
        vec!["parse rate".into(), pct(s.parse_rate)],
        vec!["validate rate".into(), pct(s.validate_rate)],
        vec!["exact plans".into(), pct(s.exact)],
    ];
    table(&["metric", "value"], &rows)
}

fn by_kind(r: &PlanEvalReport) -> Option<String> {
    let mut kinds: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for c in &r.cases {
        let k = kinds.entry(c.kind.as_deref()?).or_default();
        k.0 += 1;
        k.1 += usize::from(c.exact);
        k.2 += usize::from(c.predicted.is_some() && c.invalid.is_none());
    }
    let rows: Vec<Vec<String>> = kinds
        .iter()
        .map(|(k, (n, exact, valid))| {
            vec![
                escape(k),
                n.to_string(),
                pct(*exact as f64 / *n as f64),
                pct(*valid as f64 / *n as f64),
            ]
        })
        .collect();
    Some(table(&["kind", "requests", "exact", "valid"], &rows))
}

/// The page of a planner evaluation.
pub fn plan_page(r: &PlanEvalReport) -> String {
    let mut page = Page::new(
        "Evaluation: plans",
        &format!("planner {} · data {}", r.planner, r.data),
    );
    page.section("Figures", "", figures(r));
    if let Some(t) = by_kind(r) {
        page.section("Exact plans by request kind", "", t);
    }
    let wrong: Vec<&CaseResult> = r.cases.iter().filter(|c| !c.exact).collect();
    let mut body = format!(
        "<p>{} of {} plans differ from the gold plan; {} shown. Predicted tasks are framed \
         green when the gold plan has a task of that name, red when not.</p><div class=\"grid\">",
        wrong.len(),
        r.cases.len(),
        wrong.len().min(WRONG_SHOWN)
    );
    // Spread over the data: every n-th wrong case.
    let step = wrong.len().div_ceil(WRONG_SHOWN).max(1);
    for c in wrong.iter().step_by(step).take(WRONG_SHOWN) {
        body.push_str(&case_card(c));
    }
    body.push_str("</div>");
    page.section("Plans that differ", "", body);
    let right: Vec<&CaseResult> = r.cases.iter().filter(|c| c.exact).collect();
    let mut body = String::from("<div class=\"grid\">");
    let step = right.len().div_ceil(RIGHT_SHOWN).max(1);
    for c in right.iter().step_by(step).take(RIGHT_SHOWN) {
        body.push_str(&case_card(c));
    }
    if right.is_empty() {
        body.push_str("<p class=\"muted\">no plan equals its gold plan</p>");
    }
    body.push_str("</div>");
    page.section("Plans that are right", "", body);
    page.finish()
}
