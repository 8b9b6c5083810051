use super::*;
use crate::corpus::{split_items, PlanSplit};
use crate::plan::Plan;
use crate::tasks::TaskSpec;
use glimpse_data::rng::SplitMix64;

fn prefixes_ok(g: &PlanGrammar, text: &str) {
    for end in 0..text.len() {
        assert_eq!(g.check(&text[..end]), Status::Prefix, "{:?}", &text[..end]);
    }
    assert_eq!(g.check(text), Status::Complete, "{text}");
}

#[test]
fn accepts_every_prefix_of_every_corpus_plan() {
    let cat = Catalog::builtin();
    for split in [PlanSplit::Train, PlanSplit::Test] {
        for it in split_items(5, split, 300) {
            prefixes_ok(&PlanGrammar::new(&cat, it.images), &it.plan.to_json());
            // The corpus's literals are spans of its requests, its dependencies used.
            let g = PlanGrammar::new(&cat, it.images).copying(&it.request);
            prefixes_ok(&g, &it.plan.to_json());
        }
    }
}

fn invalid(g: &PlanGrammar, text: &str) {
    assert!(
        matches!(g.check(text), Status::Invalid(_)),
        "accepted {text:?}"
    );
}

#[test]
fn rejects_invalid_continuations() {
    let cat = Catalog::builtin();
    let g = PlanGrammar::new(&cat, 2);
    let t0 = r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}}"#;
    prefixes_ok(&g, &format!("{t0}]}}"));
    // Unknown task, id out of order, whitespace.
    invalid(&g, r#"{"tasks":[{"id":0,"task":"image-to-x"#);
    invalid(&g, r#"{"tasks":[{"id":1"#);
    invalid(&g, r#"{ "tasks"#);
    // Image beyond the request's images; an argument the task does not take.
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-3"#,
    );
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"image-to-text","dep":[-1],"args":{"text"#,
    );
    // Dependencies only on earlier tasks; resources only through `dep`.
    invalid(
        &g,
        &format!(r#"{t0},{{"id":1,"task":"image-to-text","dep":[1"#),
    );
    invalid(
        &g,
        &format!(r#"{t0},{{"id":1,"task":"text-generation","dep":[-1],"args":{{"text":"<"#),
    );
    invalid(
        &g,
        &format!(
            r#"{t0},{{"id":1,"task":"image-to-text","dep":[0],"args":{{"image":"<resource>-1"#
        ),
    );
    // An image argument cannot take a text result.
    invalid(
        &g,
        &format!(
            r#"{t0},{{"id":1,"task":"image-to-text","dep":[0],"args":{{"image":"<resource>-0"#
        ),
    );
    // A required argument skipped or missing.
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"visual-question-answering","dep":[-1],"args":{"question"#,
    );
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"visual-question-answering","dep":[-1],"args":{"image":"<image>-1"}"#,
    );
    // Empty text, text after the plan.
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"text-generation","dep":[-1],"args":{"text":"""#,
    );
    invalid(&g, &format!("{t0}]}} "));
    // With no image, nothing may take one.
    let g0 = PlanGrammar::new(&cat, 0);
    invalid(&g0, r#"{"tasks":[{"id":0,"task":"image-to-text"#);
    invalid(
        &g0,
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a"}},{"id":1,"task":"image-to-text","dep":[-1]"#,
    );
}

#[test]
fn copying_takes_literals_from_the_request_and_uses_every_dependency() {
    let cat = Catalog::builtin();
    let req = "find a red circle, then ask: what color is the square?";
    let g = PlanGrammar::new(&cat, 0).copying(req);
    let t0 = r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circle"}}"#;
    prefixes_ok(&g, &format!("{t0}]}}"));
    // Not in the request; ending or starting inside a word.
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a blue"#,
    );
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circ""#,
    );
    invalid(
        &g,
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"ed"#,
    );
    // A dependency's images must reach the image argument.
    let ask = format!(r#"{t0},{{"id":1,"task":"visual-question-answering","dep":[0],"args":{{"#);
    prefixes_ok(
        &g,
        &format!(r#"{ask}"image":"<resource>-0","question":"what color is the square?"}}}}]}}"#),
    );
    let g1 = PlanGrammar::new(&cat, 1).copying(req);
    invalid(&g1, &format!(r#"{ask}"image":"<image>-1"#));
    // A dependency no argument can take: text generation reads no images.
    invalid(
        &g,
        &format!(r#"{t0},{{"id":1,"task":"text-generation","dep":[0"#),
    );
    // Without copying the same texts are fine.
    let free = PlanGrammar::new(&cat, 1);
    assert_eq!(
        free.check(&format!(r#"{ask}"image":"<image>-1"#)),
        Status::Prefix
    );
    // Labels: items of the request's list, in its order, each once.
    let req = "is this red circle, blue square or green cross?";
    let g = PlanGrammar::new(&cat, 1).copying(req);
    let c = r#"{"tasks":[{"id":0,"task":"zero-shot-image-classification","dep":[-1],"args":{"image":"<image>-1","labels":["#;
    prefixes_ok(
        &g,
        &format!(r#"{c}"red circle","blue square","green cross"]}}}}]}}"#),
    );
    prefixes_ok(&g, &format!(r#"{c}"red circle","green cross"]}}}}]}}"#));
    invalid(&g, &format!(r#"{c}"green cross","red"#));
    invalid(&g, &format!(r#"{c}"red circle","red circle""#));
    invalid(&g, &format!(r#"{c}"red circle, blue"#));
    invalid(&g, &format!(r#"{c}"square or"#));
    // No literal ends with a space.
    invalid(&g, &format!(r#"{c}"red circle ""#));
    // A request with no words leaves literals free.
    let g2 = PlanGrammar::new(&cat, 0).copying("?!");
    assert_eq!(
        g2.check(r#"{"tasks":[{"id":0,"task":"text-generation","dep":[-1],"args":{"text":"x"}}]}"#),
        Status::Complete
    );
}

#[test]
fn external_tools_are_in_the_language() {
    let mut cat = Catalog::builtin();
    cat.add(TaskSpec {
        name: "object-detection".into(),
        description: "boxes".into(),
        required: vec![ArgName::Image],
        optional: vec![],
        output: OutputKind::Labels,
    })
    .unwrap();
    let g = PlanGrammar::new(&cat, 1);
    let text = r#"{"tasks":[{"id":0,"task":"object-detection","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"text-generation","dep":[0],"args":{"text":"<resource>-0"}}]}"#;
    prefixes_ok(&g, text);
    invalid(&PlanGrammar::new(&Catalog::builtin(), 1), text);
}

/// Random walks through the grammar over the planner's pieces: every prefix has a
/// continuation (no dead ends) and every complete text parses and validates.
#[test]
fn random_walks_never_dead_end_and_always_validate() {
    let pieces = crate::plan_tokenizer::pieces(["a red circle is there? how many"]);
    let pieces: Vec<&str> = pieces[crate::plan_tokenizer::SPECIALS.len()..]
        .iter()
        .map(String::as_str)
        .collect();
    let mut cat = Catalog::builtin();
    cat.add(TaskSpec {
        name: "image-editing".into(),
        description: "draws".into(),
        required: vec![ArgName::Image, ArgName::Text],
        optional: vec![],
        output: OutputKind::Image,
    })
    .unwrap();
    let mut rng = SplitMix64::new(11);
    for walk in 0..90 {
        let images = walk % 3;
        let g = PlanGrammar::new(&cat, images);
        // A third of the walks copy from a request.
        let g = if walk % 3 == 1 {
            g.copying("is there a red circle? how many")
        } else {
            g
        };
        let mut text = String::new();
        loop {
            let ok: Vec<&str> = pieces
                .iter()
                .copied()
                .filter(|p| g.check(&format!("{text}{p}")) != Status::Invalid(String::new()))
                .filter(|p| !matches!(g.check(&format!("{text}{p}")), Status::Invalid(_)))
                .collect();
            assert!(!ok.is_empty(), "dead end at {text:?}");
            // Favour structure so literals close.
            let weights: Vec<f32> = ok
                .iter()
                .map(|p| {
                    if p.bytes().any(|b| b"\"{}[],:<>-0123456789".contains(&b)) {
                        30.0
                    } else {
                        1.0
                    }
                })
                .collect();
            text.push_str(ok[rng.weighted(&weights)]);
            if g.check(&text) == Status::Complete {
                break;
            }
        }
        let plan = Plan::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        plan.validate(&cat, Some(images))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(plan.to_json(), text);
    }
}
