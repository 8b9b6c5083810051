use std::collections::BTreeSet;

use super::*;
use crate::tasks::Catalog;

#[test]
fn corpus_is_deterministic_and_seeded() {
    let a = split_items(7, PlanSplit::Train, 200);
    let b = split_items(7, PlanSplit::Train, 200);
    assert_eq!(a, b);
    let c = split_items(8, PlanSplit::Train, 200);
    assert_ne!(a, c);
    let t1 = split_items(7, PlanSplit::Test, 50);
    assert_eq!(t1, split_items(7, PlanSplit::Test, 50));
}

#[test]
fn held_out_templates_and_shapes_never_reach_training() {
    let train: Vec<Item> = [PlanSplit::Train, PlanSplit::Val]
        .into_iter()
        .flat_map(|s| split_items(3, s, 3000))
        .collect();
    let test = split_items(3, PlanSplit::Test, 600);
    let train_templates: BTreeSet<_> = train.iter().map(|i| i.template.clone()).collect();
    let train_shapes: BTreeSet<_> = train.iter().map(Item::shape).collect();
    for t in &test {
        assert!(
            !train_templates.contains(&t.template),
            "{} in training",
            t.template
        );
    }
    // Held-out connectors, prefixes and suffixes never reach training either.
    for t in &train {
        for held in [" and next ", "could you please ", " for me, thanks"] {
            assert!(!t.request.contains(held), "{:?} in training", t.request);
        }
    }
    let test_shapes: BTreeSet<_> = test.iter().map(Item::shape).collect();
    let new_shapes = test_shapes.difference(&train_shapes).count();
    // The held-out intents and image counts: shapes training never saw.
    assert!(new_shapes >= 6, "{new_shapes} held-out shapes");
    for s in intents().iter().filter(|i| i.held_out) {
        for t in test.iter().filter(|t| t.intent == s.name) {
            assert!(
                !train_shapes.contains(&t.shape()),
                "{}: shape seen in training",
                s.name
            );
        }
    }
}

#[test]
fn every_plan_validates_and_covers_the_catalog() {
    let cat = Catalog::builtin();
    let items: Vec<Item> = [PlanSplit::Train, PlanSplit::Test]
        .into_iter()
        .flat_map(|s| split_items(1, s, 2000))
        .collect();
    let mut tasks = BTreeSet::new();
    let mut sizes = BTreeSet::new();
    for it in &items {
        it.plan
            .validate(&cat, Some(it.images))
            .unwrap_or_else(|e| panic!("{}: {e}", it.request));
        assert_eq!(Plan::parse(&it.plan.to_json()).unwrap(), it.plan);
        assert!(
            !it.request.contains('{'),
            "unfilled slot in {:?}",
            it.request
        );
        sizes.insert(it.plan.tasks.len());
        tasks.extend(it.plan.tasks.iter().map(|t| t.task.clone()));
    }
    let all: BTreeSet<String> = cat.names().map(String::from).collect();
    assert_eq!(tasks, all);
    assert_eq!(sizes, (1..=4).collect());
    // Many phrasings per shape.
    let mut per_intent: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for it in &items {
        per_intent
            .entry(it.intent.as_str())
            .or_default()
            .insert(it.template.as_str());
    }
    assert!(per_intent.values().all(|t| t.len() >= 2));
}

#[test]
fn written_corpus_and_agent_set_are_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_plans(dir.path(), 0, 200, 8, |_| {}).unwrap();
    assert_eq!(m.agent_test, 8);
    let text = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    let tok = glimpse_data::TextTokenizer::from_file(&dir.path().join("tokenizer/tokenizer.json"))
        .unwrap();
    for line in text.lines().take(50) {
        let d: Document = serde_json::from_str(line).unwrap();
        let ids = tok.encode(&d.text, false).unwrap();
        let pieces: String = ids
            .iter()
            .map(|&i| tok.inner().id_to_token(i).unwrap())
            .collect();
        assert_eq!(pieces, d.text);
    }
    let e2e = std::fs::read_to_string(dir.path().join("agent-test.jsonl")).unwrap();
    let cat = Catalog::builtin();
    for line in e2e.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let images = v["images"].as_array().unwrap();
        for p in images {
            assert!(dir.path().join(p.as_str().unwrap()).is_file());
        }
        let plan = Plan::from_json(&v["plan"]).unwrap();
        plan.validate(&cat, Some(images.len())).unwrap();
        assert!(!v["expect"]["all"].as_array().unwrap().is_empty());
    }
    // A rerun writes the same bytes.
    let before = std::fs::read(dir.path().join("agent-test.jsonl")).unwrap();
    write_plans(dir.path(), 0, 200, 8, |_| {}).unwrap();
    assert_eq!(
        before,
        std::fs::read(dir.path().join("agent-test.jsonl")).unwrap()
    );
}
