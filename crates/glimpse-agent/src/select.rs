//! Stage 2: a model for each task. The candidates are the registry's entries that
//! perform the task's type. One candidate is taken without asking ("only
//! candidate"); among several a [`Chooser`] decides and says why: the remote planner
//! asks its LLM (HuggingGPT's model selection), and offline [`RuleChooser`] takes the
//! candidate whose tags fit the task best. No candidate is an error that names the
//! missing capability and how to add one, where HuggingGPT stops with "no available
//! models".

use serde::Serialize;

use crate::plan::{Plan, PlanTask};
use crate::registry::{Entry, Registry};
use crate::{Error, Result};

/// The model chosen for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// The task's id.
    pub task: usize,
    /// The registry entry's id.
    pub model: String,
    pub reason: String,
    /// How many entries could do the task.
    pub candidates: usize,
}

/// Picks one of several candidates for a task.
pub trait Chooser: Send + Sync {
    /// The index into `candidates` (at least two) and the reason.
    fn choose(
        &self,
        request: &str,
        task: &PlanTask,
        candidates: &[&Entry],
    ) -> Result<(usize, String)>;
}

/// The tags that mark a good fit for each task type, most telling first.
fn preferred_tags(task: &str) -> &'static [&'static str] {
    match task {
        "image-to-text" => &["caption"],
        "visual-question-answering" => &["vqa", "answer"],
        "zero-shot-image-classification" => &["classify"],
        "image-text-matching" => &["itm", "match"],
        "text-to-image-retrieval" | "image-to-image-retrieval" => &["retrieval", "index"],
        "text-generation" => &["language-model", "generate"],
        _ => &[],
    }
}

/// Tags that break a tie between candidates of equal fit and origin: a VQA model whose
/// card says it was tuned for counting (the agent's questions ask "how many" often).
/// They come after the origin, so a `--model` still wins over a bundled model.
fn tie_tags(task: &str) -> &'static [&'static str] {
    match task {
        "visual-question-answering" => &["counting"],
        _ => &[],
    }
}

/// Offline selection: the most fitting tags first (an ITM head for matching, a VQA
/// head for questions), then the origin (`--model`, `--index`, tools, bundled), then
/// the tie tags, then registry order.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleChooser;

impl Chooser for RuleChooser {
    fn choose(
        &self,
        _request: &str,
        task: &PlanTask,
        candidates: &[&Entry],
    ) -> Result<(usize, String)> {
        let wanted = preferred_tags(&task.task);
        let fit = |e: &Entry| -> Vec<&'static str> {
            wanted
                .iter()
                .copied()
                .filter(|w| e.tags.iter().any(|t| t == w))
                .collect()
        };
        let score = |e: &Entry| -> usize {
            // Earlier preferred tags weigh more.
            wanted
                .iter()
                .enumerate()
                .filter(|(_, w)| e.tags.iter().any(|t| t == *w))
                .map(|(i, _)| 1 << (wanted.len() - i))
                .sum()
        };
        let (best, _) = candidates
            .iter()
            .enumerate()
            .min_by_key(|(i, e)| {
                let tie = tie_tags(&task.task)
                    .iter()
                    .filter(|w| e.tags.iter().any(|t| t == *w))
                    .count();
                (
                    std::cmp::Reverse(score(e)),
                    e.origin,
                    std::cmp::Reverse(tie),
                    *i,
                )
            })
            .expect("at least one candidate");
        let e = candidates[best];
        let tags = fit(e);
        let reason = if tags.is_empty() {
            format!(
                "rule: first of {} candidates ({:?} before others)",
                candidates.len(),
                e.origin
            )
        } else {
            let ties: Vec<&str> = tie_tags(&task.task)
                .iter()
                .copied()
                .filter(|w| e.tags.iter().any(|t| t == w))
                .collect();
            let then = if ties.is_empty() {
                String::new()
            } else {
                format!(", then {}", ties.join(", "))
            };
            format!(
                "rule: best tag fit ({}{then}) of {} candidates",
                tags.join(", "),
                candidates.len()
            )
        };
        Ok((best, reason))
    }
}

/// Chooses a model for every task of `plan`.
pub fn select(
    plan: &Plan,
    registry: &Registry,
    chooser: &dyn Chooser,
    request: &str,
) -> Result<Vec<Choice>> {
    plan.tasks
        .iter()
        .map(|t| {
            let candidates = registry.candidates(&t.task);
            let (i, reason) = match candidates.len() {
                0 => {
                    return Err(Error::NoModel {
                        task: t.task.clone(),
                        hint: missing_hint(&t.task),
                    })
                }
                1 => (0, "only candidate".to_string()),
                _ => chooser.choose(request, t, &candidates)?,
            };
            let chosen = candidates.get(i).ok_or_else(|| {
                Error::Plan(format!(
                    "task {}: the chooser picked candidate {i} of {}",
                    t.id,
                    candidates.len()
                ))
            })?;
            Ok(Choice {
                task: t.id,
                model: chosen.id.clone(),
                reason,
                candidates: candidates.len(),
            })
        })
        .collect()
}

fn missing_hint(task: &str) -> String {
    match task {
        "text-to-image-retrieval" | "image-to-image-retrieval" => {
            "give --index IDX (built by `glimpse index build`) or declare a tool in --registry"
                .into()
        }
        "image-to-text"
        | "visual-question-answering"
        | "zero-shot-image-classification"
        | "image-text-matching"
        | "text-generation" => {
            "load a model that has it with --model DIR, or declare a tool in --registry".into()
        }
        _ => "declare a tool in --registry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn registry() -> Registry {
        Registry::bundled(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap()
    }

    fn plan(text: &str) -> Plan {
        Plan::parse(text).unwrap()
    }

    #[test]
    fn one_candidate_is_taken_without_asking_and_several_by_the_rule() {
        let reg = registry();
        let p = plan(
            r#"{"tasks":[
            {"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},
            {"id":1,"task":"image-text-matching","dep":[-1],"args":{"image":"<image>-1","text":"a red circle"}}]}"#,
        );
        let choices = select(&p, &reg, &RuleChooser, "x").unwrap();
        assert_eq!(choices[0].model, "blip-synth-caption");
        assert_eq!(choices[0].reason, "only candidate");
        // CLIP matches by cosine; BLIP's retrieval model has an ITM head.
        assert_eq!(choices[1].model, "blip-synth-retrieval");
        assert!(choices[1].candidates >= 2);
        assert!(choices[1].reason.contains("itm"), "{}", choices[1].reason);
    }

    #[test]
    fn a_vqa_model_tuned_for_counting_breaks_the_tie() {
        let p = plan(
            r#"[{"id":0,"task":"visual-question-answering","dep":[-1],"args":{"image":"<image>-1","question":"how many objects are there?"}}]"#,
        );
        let reg = registry();
        let c = select(&p, &reg, &RuleChooser, "x").unwrap();
        assert_eq!(c[0].model, "blip-synth-vqa-count", "{}", c[0].reason);
        assert!(c[0].reason.contains("then counting"), "{}", c[0].reason);
        // The tie comes after the origin: a `--model` VQA model still wins.
        let mut loaded = reg.candidates("visual-question-answering")[0].clone();
        loaded.origin = crate::registry::Origin::Loaded;
        loaded.tags.retain(|t| t != "counting");
        let mut vqa_count = reg
            .candidates("visual-question-answering")
            .into_iter()
            .find(|e| e.id == "blip-synth-vqa-count")
            .unwrap()
            .clone();
        vqa_count.origin = crate::registry::Origin::Bundled;
        let (i, _) = RuleChooser
            .choose("x", &p.tasks[0], &[&vqa_count, &loaded])
            .unwrap();
        assert_eq!(i, 1);
    }

    #[test]
    fn a_missing_capability_is_named() {
        let p =
            plan(r#"[{"id":0,"task":"object-detection","dep":[-1],"args":{"image":"<image>-1"}}]"#);
        let err = select(&p, &registry(), &RuleChooser, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no available model for `object-detection`: declare a tool in --registry"
        );
        let p = plan(
            r#"[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a cat"}}]"#,
        );
        let err = select(&p, &registry(), &RuleChooser, "x").unwrap_err();
        assert!(err.to_string().contains("--index"), "{err}");
    }

    struct Second;
    impl Chooser for Second {
        fn choose(&self, _: &str, _: &PlanTask, c: &[&Entry]) -> Result<(usize, String)> {
            Ok((c.len() - 1, "the last one".into()))
        }
    }

    #[test]
    fn the_chooser_decides_among_several() {
        let p = plan(r#"[{"id":0,"task":"text-generation","dep":[-1],"args":{"text":"hello"}}]"#);
        let reg = registry();
        let n = reg.candidates("text-generation").len();
        assert!(n >= 2, "llama and opt are bundled");
        let c = select(&p, &reg, &Second, "x").unwrap();
        assert_eq!(c[0].model, reg.candidates("text-generation")[n - 1].id);
        assert_eq!(c[0].reason, "the last one");
    }
}
