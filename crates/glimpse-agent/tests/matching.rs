//! Image-text matching through the agent: the model's `match_calibration.json` gives
//! the score, so a description of one object of a multi-object scene ranks that scene
//! first and is answered yes (BLIP's ITM head gave it about 0: the end-to-end misses
//! of 2026-12-07 in docs/results.md).

use std::path::{Path, PathBuf};

use glimpse_agent::agent::{Agent, AgentConfig};
use glimpse_agent::calibrate::{Calibration, Measured, Weights, FILE};
use glimpse_agent::execute::{Output, TaskState};
use glimpse_agent::{Plan, RuleChooser};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Scene `index` of the world with seed 0 (as `glimpse data plans` draws them).
fn world_image(dir: &Path, index: u64) -> PathBuf {
    let cfg = glimpse_synth::SynthConfig {
        count: u64::MAX / 2,
        ..glimpse_synth::SynthConfig::default()
    };
    let s = glimpse_synth::sample(&cfg, index);
    let p = dir.join(format!("{index}.png"));
    s.image.save(&p).unwrap();
    p
}

fn agent(models: Vec<String>, bundled: bool) -> Agent {
    let cfg = AgentConfig {
        models,
        bundled_root: bundled.then(root),
        ..AgentConfig::default()
    };
    Agent::new(cfg, None, Box::new(RuleChooser)).unwrap()
}

fn match_plan(images: usize, text: &str) -> Plan {
    let tasks: Vec<String> = (0..images)
        .map(|i| {
            format!(
                r#"{{"id":{i},"task":"image-text-matching","dep":[-1],"args":{{"image":"<image>-{}","text":"{text}"}}}}"#,
                i + 1
            )
        })
        .collect();
    Plan::parse(&format!(r#"{{"tasks":[{}]}}"#, tasks.join(","))).unwrap()
}

fn scores(report: &glimpse_agent::Report) -> Vec<f32> {
    report
        .results
        .iter()
        .map(|r| match &r.state {
            TaskState::Done { items } => match items[0].output {
                Output::Score { score } => score,
                ref o => panic!("not a score: {o:?}"),
            },
            s => panic!("task {} did not finish: {s:?}", r.id),
        })
        .collect()
}

#[test]
fn the_bundled_matcher_is_calibrated() {
    let cal = Calibration::load(&root().join("models/blip-synth/retrieval"))
        .unwrap()
        .expect("models/blip-synth/retrieval/match_calibration.json");
    let m = &cal.measured;
    // Measured on held-out validation scenes when it was fitted: the calibrated score
    // ranks and decides better than the ITM probability it replaces.
    assert!(m.rank_calibrated > m.rank_itm, "{m:?}");
    assert!(m.yes_no_calibrated > m.yes_no_itm, "{m:?}");
    assert!(cal.weights.cosine > 0.0, "{:?}", cal.weights);
}

#[test]
fn a_partial_description_ranks_its_scene_first_and_is_answered_yes() {
    let dir = tempfile::tempdir().unwrap();
    // 3505: two cyan stars; 3481: two medium blue crosses on a green background.
    let images = vec![world_image(dir.path(), 3505), world_image(dir.path(), 3481)];
    let a = agent(Vec::new(), true);
    let r = a
        .run_plan(
            "which image shows a blue cross?",
            &images,
            match_plan(2, "a blue cross"),
        )
        .unwrap();
    assert!(
        r.answer.contains("image 2 matches \"a blue cross\" best"),
        "{}",
        r.answer
    );
    let one = a
        .run_plan(
            "is there a blue cross?",
            &images[1..],
            match_plan(1, "a blue cross"),
        )
        .unwrap();
    assert!(
        one.answer.contains("match \"a blue cross\"? yes"),
        "{}",
        one.answer
    );
}

#[test]
fn the_calibration_file_decides_the_score() {
    // A copy of the bundled matcher whose calibration ignores the image: every score
    // is sigmoid(bias), which proves the file, not the ITM head, gives it.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("matcher");
    std::fs::create_dir(&model).unwrap();
    let src = root().join("models/blip-synth/retrieval");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != FILE {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    let img = world_image(dir.path(), 3481);
    let plan = || match_plan(1, "a red heart");
    let plain = agent(vec![model.display().to_string()], false)
        .run_plan("is there a red heart?", std::slice::from_ref(&img), plan())
        .unwrap();
    let cal = Calibration {
        weights: Weights {
            cosine: 0.0,
            itm: 0.0,
            bias: 2.0,
        },
        fitted_on: "a test".into(),
        pairs: 0,
        measured: Measured::default(),
    };
    cal.save(&model).unwrap();
    let calibrated = agent(vec![model.display().to_string()], false)
        .run_plan("is there a red heart?", std::slice::from_ref(&img), plan())
        .unwrap();
    let want = 1.0 / (1.0 + (-2.0f32).exp());
    assert!((scores(&calibrated)[0] - want).abs() < 1e-6);
    assert!(scores(&plain)[0] < 0.5, "{}", plain.answer);
    assert!(
        calibrated.answer.contains("yes (0.88)"),
        "{}",
        calibrated.answer
    );
}
