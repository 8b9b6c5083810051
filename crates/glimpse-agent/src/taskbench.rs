//! TaskBench's metrics for plans (Shen et al., 2023, "TaskBench: Benchmarking Large
//! Language Models for Task Automation", `evaluate.py` of its repository), over a
//! predicted and a gold [`Plan`] per request:
//!
//! - node F1: task names;
//! - edge F1: dependencies as (source task name, target task name) pairs — graphs are
//!   matched by name, as TaskBench matches them, so renumbering tasks changes nothing;
//! - argument-name F1: `task-argument` pairs; argument-value F1: `task-argument-value`
//!   triples, where a `<resource>-N` value stands for task N's name (as TaskBench
//!   replaces a `<node-N>` argument by its tool) and `<image>-K` stays as written;
//! - normalised edit distance between the sequences of task names: the insert/delete
//!   distance over the sum of the lengths (`1 - Levenshtein.ratio`), averaged over
//!   requests.
//!
//! Every F1 is micro-averaged over all requests. TaskBench counts each name once per
//! request (sets); here repeats count (multisets), because fan-outs repeat a task per
//! image and a plan that captions two of three images is not whole. Without repeats the
//! two agree. A prediction that does not parse counts as an empty plan.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::{ArgValue, Plan, Reference};

/// True and false positives and false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    /// Matches two multisets.
    pub fn of(pred: &[String], gold: &[String]) -> Self {
        let mut bag: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for p in pred {
            bag.entry(p).or_default().0 += 1;
        }
        for g in gold {
            bag.entry(g).or_default().1 += 1;
        }
        let mut c = Self::default();
        for (p, g) in bag.values() {
            let both = (*p).min(*g);
            c.tp += both;
            c.fp += p - both;
            c.fn_ += g - both;
        }
        c
    }

    pub fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }

    /// F1; 1 when there is nothing to find and nothing was found.
    pub fn f1(&self) -> f64 {
        let denom = 2 * self.tp + self.fp + self.fn_;
        if denom == 0 {
            1.0
        } else {
            2.0 * self.tp as f64 / denom as f64
        }
    }
}

/// The items TaskBench compares, of one plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parts {
    pub nodes: Vec<String>,
    pub edges: Vec<String>,
    pub arg_names: Vec<String>,
    pub arg_values: Vec<String>,
}

impl Parts {
    pub fn of(plan: &Plan) -> Self {
        let name_of = |id: usize| {
            plan.get(id)
                .map_or_else(|| format!("<missing {id}>"), |t| t.task.clone())
        };
        let mut p = Parts::default();
        for t in &plan.tasks {
            p.nodes.push(t.task.clone());
            for d in &t.dep {
                p.edges.push(format!("{} -> {}", name_of(*d), t.task));
            }
            for (name, value) in &t.args {
                p.arg_names.push(format!("{}-{name}", t.task));
                let v = match value {
                    ArgValue::Ref(Reference::Resource(n)) => format!("<resource>:{}", name_of(*n)),
                    other => other.as_plain(),
                };
                p.arg_values.push(format!("{}-{name}-{v}", t.task));
            }
        }
        p
    }
}

/// Insert/delete distance between two sequences over the sum of their lengths.
pub fn normalised_edit_distance(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    // Longest common subsequence: indel distance = |a| + |b| - 2 lcs.
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let lcs = row[b.len()];
    (a.len() + b.len() - 2 * lcs) as f64 / (a.len() + b.len()) as f64
}

/// The metrics over many requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanScores {
    pub requests: usize,
    pub node_f1: f64,
    pub edge_f1: f64,
    pub arg_name_f1: f64,
    pub arg_value_f1: f64,
    pub edit_distance: f64,
    /// Share of predictions that parse, and that validate against the catalog.
    pub parse_rate: f64,
    pub validate_rate: f64,
    /// Share of predictions equal to the gold plan.
    pub exact: f64,
    pub nodes: Counts,
    pub edges: Counts,
    pub arg_names: Counts,
    pub arg_values: Counts,
}

/// Adds up requests one at a time.
#[derive(Debug, Default)]
pub struct Accumulator {
    n: usize,
    parsed: usize,
    valid: usize,
    exact: usize,
    ned: f64,
    nodes: Counts,
    edges: Counts,
    names: Counts,
    values: Counts,
}

impl Accumulator {
    /// One request: the prediction (`None` when it did not parse), whether it
    /// validated, and the gold plan.
    pub fn add(&mut self, pred: Option<&Plan>, valid: bool, gold: &Plan) {
        let empty = Plan::default();
        let p = Parts::of(pred.unwrap_or(&empty));
        let g = Parts::of(gold);
        self.n += 1;
        self.parsed += usize::from(pred.is_some());
        self.valid += usize::from(pred.is_some() && valid);
        self.exact += usize::from(pred == Some(gold));
        self.ned += normalised_edit_distance(&p.nodes, &g.nodes);
        self.nodes.add(Counts::of(&p.nodes, &g.nodes));
        self.edges.add(Counts::of(&p.edges, &g.edges));
        self.names.add(Counts::of(&p.arg_names, &g.arg_names));
        self.values.add(Counts::of(&p.arg_values, &g.arg_values));
    }

    pub fn scores(&self) -> PlanScores {
        let n = self.n.max(1) as f64;
        PlanScores {
            requests: self.n,
            node_f1: self.nodes.f1(),
            edge_f1: self.edges.f1(),
            arg_name_f1: self.names.f1(),
            arg_value_f1: self.values.f1(),
            edit_distance: self.ned / n,
            parse_rate: self.parsed as f64 / n,
            validate_rate: self.valid as f64 / n,
            exact: self.exact as f64 / n,
            nodes: self.nodes,
            edges: self.edges,
            arg_names: self.names,
            arg_values: self.values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(s: &str) -> Plan {
        Plan::parse(s).unwrap()
    }

    const GOLD: &str = r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circle"}},{"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]}"#;

    #[test]
    fn identical_plans_score_one() {
        let mut acc = Accumulator::default();
        acc.add(Some(&plan(GOLD)), true, &plan(GOLD));
        let s = acc.scores();
        assert_eq!(
            (
                s.node_f1,
                s.edge_f1,
                s.arg_name_f1,
                s.arg_value_f1,
                s.edit_distance,
                s.exact
            ),
            (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
        );
    }

    /// Worked by hand: the prediction keeps the retrieval (text wrong) and replaces
    /// the caption by a question with no dependency.
    #[test]
    fn hand_computed_case() {
        let pred = plan(
            r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a blue circle"}},{"id":1,"task":"visual-question-answering","dep":[-1],"args":{"image":"<image>-1","question":"what is it?"}}]}"#,
        );
        let mut acc = Accumulator::default();
        acc.add(Some(&pred), true, &plan(GOLD));
        let s = acc.scores();
        // nodes: tp 1 (retrieval), fp 1 (vqa), fn 1 (caption): 2/4.
        assert_eq!(
            s.nodes,
            Counts {
                tp: 1,
                fp: 1,
                fn_: 1
            }
        );
        assert!((s.node_f1 - 0.5).abs() < 1e-12);
        // edges: gold has retrieval -> caption, prediction none.
        assert_eq!(s.edge_f1, 0.0);
        // names: t2i-text matches; vqa-image, vqa-question vs image-to-text-image: 2/5.
        assert!((s.arg_name_f1 - 2.0 / 5.0).abs() < 1e-12);
        // values: none match (text differs).
        assert_eq!(s.arg_value_f1, 0.0);
        // indel distance [t2i, vqa] vs [t2i, caption] = 2 over 4.
        assert!((s.edit_distance - 0.5).abs() < 1e-12);
    }

    #[test]
    fn renumbered_graphs_match_by_name_and_repeats_count() {
        let gold = plan(
            r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-2"}},{"id":2,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-3"}}]}"#,
        );
        let two = plan(
            r#"[{"id":5,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-2"}},{"id":7,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}}]"#,
        );
        let mut acc = Accumulator::default();
        acc.add(Some(&two), true, &gold);
        let s = acc.scores();
        assert_eq!(
            s.nodes,
            Counts {
                tp: 2,
                fp: 0,
                fn_: 1
            }
        );
        assert!((s.node_f1 - 0.8).abs() < 1e-12);
        assert!((s.arg_value_f1 - 0.8).abs() < 1e-12);
        assert!((s.edit_distance - 1.0 / 5.0).abs() < 1e-12);
        // An empty gold and prediction agree; an unparsed prediction is empty.
        let mut acc = Accumulator::default();
        acc.add(None, false, &gold);
        let s = acc.scores();
        assert_eq!((s.node_f1, s.parse_rate, s.edit_distance), (0.0, 0.0, 1.0));
    }
}
