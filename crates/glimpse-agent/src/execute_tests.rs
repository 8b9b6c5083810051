use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::backends::{Loader, RunOptions};
use crate::registry::Registry;
use crate::tasks::OutputKind;
use crate::tools::Tool;

fn sh_tool(id: &str, task: &str, output: OutputKind, script: &str) -> Tool {
    Tool {
        id: id.into(),
        task: task.into(),
        description: format!("{id} for tests"),
        inputs: vec![ArgName::Image],
        optional: vec![ArgName::Text],
        output,
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        url: None,
        timeout_s: 20.0,
        tags: vec![],
        task_description: None,
        dir: PathBuf::from("."),
    }
}

fn loader(tools: Vec<Tool>) -> Loader {
    let mut reg = Registry::default();
    for t in tools {
        reg.add_tool(t).unwrap();
    }
    Loader::new(reg, RunOptions::default())
}

fn choices(plan: &Plan, model: impl Fn(&str) -> &'static str) -> Vec<Choice> {
    plan.tasks
        .iter()
        .map(|t| Choice {
            task: t.id,
            model: model(&t.task).into(),
            reason: "test".into(),
            candidates: 1,
        })
        .collect()
}

#[test]
fn independent_tasks_run_together_and_dependents_after_them() {
    let slow = sh_tool(
        "slow",
        "slow-text",
        OutputKind::Text,
        r#"sleep 0.6; cat >/dev/null; echo '{"text": "slept"}'"#,
    );
    let plan = Plan::parse(
        r#"{"tasks":[
        {"id":0,"task":"slow-text","dep":[-1],"args":{"image":"<image>-1"}},
        {"id":1,"task":"slow-text","dep":[-1],"args":{"image":"<image>-1"}},
        {"id":2,"task":"slow-text","dep":[-1],"args":{"image":"<image>-1"}},
        {"id":3,"task":"slow-text","dep":[0,1],"args":{"image":"<image>-1","text":"<resource>-0"}}]}"#,
    )
    .unwrap();
    let l = loader(vec![slow]);
    let started = Instant::now();
    let reports = execute(&plan, &choices(&plan, |_| "slow"), &["x.png".into()], &l);
    let took = started.elapsed();
    // Three at once (0.6 s), then the fourth (0.6 s): well under four in a row (2.4 s).
    assert!(took < Duration::from_millis(2000), "{took:?}");
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    assert!(reports
        .iter()
        .all(|r| matches!(r.state, TaskState::Done { .. })));
    assert_eq!(reports[3].items()[0].input.text.as_deref(), Some("slept"));
}

#[test]
fn a_failed_task_skips_its_dependents_with_the_reason() {
    let bad = sh_tool(
        "broken",
        "broken-task",
        OutputKind::Text,
        "echo 'the detector crashed' >&2; exit 4",
    );
    let good = sh_tool(
        "good",
        "good-task",
        OutputKind::Text,
        r#"cat >/dev/null; echo '{"text": "fine"}'"#,
    );
    let plan = Plan::parse(
        r#"[{"id":0,"task":"broken-task","dep":[-1],"args":{"image":"<image>-1"}},
        {"id":1,"task":"good-task","dep":[0],"args":{"image":"<image>-1","text":"<resource>-0"}},
        {"id":2,"task":"good-task","dep":[1],"args":{"image":"<image>-1","text":"<resource>-1"}},
        {"id":3,"task":"good-task","dep":[-1],"args":{"image":"<image>-1"}}]"#,
    )
    .unwrap();
    let l = loader(vec![bad, good]);
    let c = choices(
        &plan,
        |t| if t == "broken-task" { "broken" } else { "good" },
    );
    let r = execute(&plan, &c, &["x.png".into()], &l);
    match &r[0].state {
        TaskState::Failed { error } => {
            assert!(
                error.contains("broken") && error.contains("the detector crashed"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r[1].state,
        TaskState::Skipped {
            reason: "task 0 failed".into()
        }
    );
    assert_eq!(
        r[2].state,
        TaskState::Skipped {
            reason: "task 1 was skipped".into()
        }
    );
    assert!(matches!(r[3].state, TaskState::Done { .. }));
}

#[test]
fn retrieved_images_fan_a_task_out_over_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    image::RgbImage::new(10, 20).save(&a).unwrap();
    image::RgbImage::new(30, 40).save(&b).unwrap();
    let finder = sh_tool(
        "finder",
        "find-images",
        OutputKind::Images,
        &format!(
            r#"cat >/dev/null; echo '{{"images": [{{"key": "k1", "path": "{}", "score": 0.9}}, {{"key": "k2", "path": "{}", "score": 0.8}}]}}'"#,
            a.display(),
            b.display()
        ),
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut size = crate::tools::read_registry(&fixtures.join("tools.toml"))
        .unwrap()
        .remove(0);
    size.dir = fixtures;
    let plan = Plan::parse(
        r#"[{"id":0,"task":"find-images","dep":[-1],"args":{"image":"<image>-1"}},
        {"id":1,"task":"image-size","dep":[0],"args":{"image":"<resource>-0"}}]"#,
    )
    .unwrap();
    let l = loader(vec![finder, size]);
    let c = choices(&plan, |t| {
        if t == "find-images" {
            "finder"
        } else {
            "png-size"
        }
    });
    let r = execute(&plan, &c, &[a.display().to_string()], &l);
    let items = r[1].items();
    assert_eq!(items.len(), 2, "{:?}", r[1]);
    assert_eq!(items[0].input.image.as_ref().unwrap().label, "image k1");
    assert_eq!(
        items[1].output,
        Output::Text {
            text: "30x40 pixels".into()
        }
    );
}

#[test]
fn bundled_models_caption_and_match_a_world_image() {
    let tmp = tempfile::tempdir().unwrap();
    let s = glimpse_synth::sample(&glimpse_synth::SynthConfig::default(), 7);
    let path = tmp.path().join("scene.png");
    s.image.save(&path).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let reg = Registry::bundled(&root).unwrap();
    let l = Loader::new(reg, RunOptions::default());
    let obj = &s.record.objects[0];
    let plan = Plan::parse(&format!(
        r#"[{{"id":0,"task":"image-to-text","dep":[-1],"args":{{"image":"<image>-1"}}}},
        {{"id":1,"task":"image-text-matching","dep":[-1],"args":{{"image":"<image>-1","text":"a {} {}"}}}},
        {{"id":2,"task":"zero-shot-image-classification","dep":[-1],"args":{{"image":"<image>-1","labels":["red circle","{} {}"]}}}}]"#,
        obj.color, obj.shape, obj.color, obj.shape
    ))
    .unwrap();
    let c = choices(&plan, |t| match t {
        "image-to-text" => "blip-synth-caption",
        "image-text-matching" => "blip-synth-retrieval",
        _ => "clip-synth",
    });
    let r = execute(&plan, &c, &[path.display().to_string()], &l);
    match &r[0].items()[0].output {
        Output::Text { text } => assert!(!text.is_empty()),
        other => panic!("{other:?} {:?}", r[0]),
    }
    match &r[1].items()[0].output {
        Output::Score { score } => assert!((0.0..=1.0).contains(score)),
        other => panic!("{other:?}"),
    }
    match &r[2].items()[0].output {
        Output::Labels { labels } => {
            assert_eq!(labels.len(), 2);
            assert!(labels[0].score >= labels[1].score);
        }
        other => panic!("{other:?}"),
    }
}
