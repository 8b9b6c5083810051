//! The pages of CapFilt's filter quality and of a planner evaluation: each has its
//! figures, its plot or graphs and its images, no broken reference and no external
//! resource, and escapes hostile text.

use glimpse_agent::plan::Plan;
use glimpse_agent::plan_eval::{CaseResult, PlanEvalReport};
use glimpse_agent::taskbench::Accumulator;
use glimpse_capfilt::quality::{Example, Group, Kept, KindRow, Quality, SweepPoint};
use glimpse_eval::evidence::Thumbnail;
use glimpse_report::check::page_problems;
use glimpse_report::{write_capfilt_report, write_plan_report};

const HOSTILE: &str = "<script>alert('x')</script> a red <b>circle</b>";

fn thumb(seed: u8) -> Thumbnail {
    Thumbnail::of(&image::RgbImage::from_fn(24, 24, |x, y| {
        image::Rgb([seed.wrapping_mul(50), x as u8 * 9, y as u8 * 9])
    }))
}

fn example(key: &str, text: &str, itm: f64, kept: bool, clean: Option<&str>) -> Example {
    Example {
        key: key.into(),
        text: text.into(),
        itm: Some(itm),
        kept,
        clean_caption: clean.map(String::from),
        thumbnail: Some(thumb(key.len() as u8 + text.len() as u8)),
    }
}

fn checked(path: &std::path::Path) -> String {
    let html = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        page_problems(&html, path.parent().unwrap()),
        Vec::<String>::new()
    );
    assert!(!html.contains("<script"), "hostile text was not escaped");
    html
}

#[test]
fn a_capfilt_page_shows_kinds_the_sweep_and_kept_and_removed_captions() {
    let q = Quality {
        out: "out/boot".into(),
        captioner: "capfilt-synth/captioner".into(),
        filter: "capfilt-synth/filter".into(),
        threshold: 0.5,
        samples: 10,
        unlabelled: 0,
        kinds: vec![
            KindRow {
                kind: "truncated".into(),
                n: 4,
                removed: 3,
            },
            KindRow {
                kind: "wrong colour".into(),
                n: 2,
                removed: 2,
            },
        ],
        corrupted: KindRow {
            kind: "all kinds".into(),
            n: 6,
            removed: 5,
        },
        clean: Kept { n: 4, kept: 3 },
        synthetic: Kept { n: 10, kept: 4 },
        sweep: (1..20)
            .map(|i| SweepPoint {
                threshold: f64::from(i) / 20.0,
                corrupted_removed: f64::from(i) / 20.0,
                clean_kept: 1.0 - f64::from(i) / 40.0,
            })
            .collect(),
        evidence: vec![
            Group {
                name: "truncated".into(),
                removed: vec![example("s1", "a red", 0.1, false, Some("a red circle"))],
                kept: vec![example("s2", HOSTILE, 0.7, true, Some("a red circle"))],
            },
            Group {
                name: "clean".into(),
                removed: vec![],
                kept: vec![example("s3", "two blue squares", 0.9, true, None)],
            },
            Group {
                name: "synthetic".into(),
                removed: vec![example("s4", "a picture of noise", 0.02, false, None)],
                kept: vec![],
            },
        ],
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = write_capfilt_report(&q, &tmp.path().join("capfilt")).unwrap();
    let html = checked(&w.path);
    for want in [
        "corrupted: truncated",
        "75.0%",
        "clean kept",
        "corrupted: wrong colour",
        "Corrupted: truncated",
        "truncated kept (missed): 1 shown",
        "clean: “a red circle”",
        "Synthetic captions",
        "ITM 0.020",
    ] {
        assert!(html.contains(want), "missing {want:?}");
    }
    assert_eq!(html.matches("<img src=\"data:image/").count(), 4);
    assert_eq!(html.matches("<svg").count(), 1, "one sweep plot");
    // A group without a kind of its own in `kinds` still gets its section.
    assert!(html.contains("Clean web captions"));
}

fn plan(json: &str) -> Plan {
    Plan::parse(json).unwrap()
}

#[test]
fn a_plan_page_draws_gold_and_predicted_graphs_of_wrong_plans() {
    let gold = plan(
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circle"}},
            {"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]}"#,
    );
    let wrong = plan(
        r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circle"}},
            {"id":1,"task":"visual-question-answering","dep":[0],"args":{"image":"<resource>-0","question":"what is it?"}}]}"#,
    );
    let mut acc = Accumulator::default();
    let case = |key: &str, request: &str, pred: Option<Plan>, raw: &str| CaseResult {
        key: key.into(),
        kind: Some("retrieve-caption".into()),
        request: request.into(),
        raw: raw.into(),
        parsed: pred.is_some(),
        invalid: None,
        exact: pred.as_ref() == Some(&gold),
        gold: gold.clone(),
        predicted: pred,
    };
    let cases = vec![
        case(
            "r1",
            "find a red circle and describe it",
            Some(gold.clone()),
            "",
        ),
        case("r2", HOSTILE, Some(wrong.clone()), ""),
        case(
            "r3",
            "describe a red circle",
            None,
            "no JSON plan in \"<tasks\"",
        ),
    ];
    for c in &cases {
        acc.add(c.predicted.as_ref(), c.predicted.is_some(), &gold);
    }
    let r = PlanEvalReport {
        planner: "models/planner-synth".into(),
        data: "data/plans/test.jsonl".into(),
        scores: acc.scores(),
        cases,
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = write_plan_report(&r, &tmp.path().join("plans")).unwrap();
    let html = checked(&w.path);
    for want in [
        "node F1",
        "Exact plans by request kind",
        "retrieve-caption",
        "2 of 3 plans differ",
        "1 visual-question-answering",
        "the plan differs",
        "no plan",
        "no JSON plan in &quot;&lt;tasks&quot;",
        "the plan equals the gold plan",
    ] {
        assert!(html.contains(want), "missing {want:?}");
    }
    // Gold and predicted graphs for r1 and r2, gold alone for r3: five graphs, with
    // the wrong task framed red and the right ones green.
    assert_eq!(html.matches("<svg class=\"plan\"").count(), 5);
    assert!(html.contains("stroke=\"#b91c1c\""));
    assert!(html.contains("stroke=\"#16a34a\""));
    // Edges: one per dependency in every drawn graph.
    assert_eq!(html.matches("fill=\"none\" stroke=\"#667085\"").count(), 5);
}
