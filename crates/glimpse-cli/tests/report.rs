//! Report pages from the command line: `glimpse eval --report DIR` with the bundled
//! models on a small synthetic set writes a page with its images and no broken
//! reference; `glimpse train` ends by printing its run's page; `glimpse report`
//! overlays runs and refuses bad directories by name.

mod common;

use std::path::Path;

use common::{fails, glimpse};
use glimpse_report::check::page_problems;
use glimpse_synth::{self as synth, SynthConfig};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn synth_data(dir: &Path) -> String {
    let cfg = SynthConfig {
        seed: 11,
        count: 16,
        val_fraction: 0.0,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    synth::generate(&cfg, dir, |_, _| {}).unwrap();
    dir.display().to_string()
}

/// Runs `eval --report` with the bundled model of `task`; returns the page.
fn eval_page(data: &str, out: &Path, task: &str, limit: &str) -> String {
    let dir = out.join(task);
    let o = glimpse(&[
        "eval",
        "--task",
        task,
        "--data",
        data,
        "--limit",
        limit,
        "--max-new-tokens",
        "12",
        "--report",
        dir.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "eval {task}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let page = dir.join("index.html");
    assert!(
        stdout(&o).contains(&format!("report: {}", page.display())),
        "{}",
        stdout(&o)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(page_problems(&html, &dir), Vec::<String>::new(), "{task}");
    html
}

fn images(html: &str) -> usize {
    html.matches("<img src=\"data:image/").count()
}

#[test]
fn eval_report_pages_of_the_bundled_models_have_their_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_data(&tmp.path().join("data"));
    let out = tmp.path().join("reports");

    let html = eval_page(&data, &out, "retrieval", "16");
    assert!(html.contains("Queries and their top 5"));
    // Each query shows five images (and the right one when it is missing).
    assert!(images(&html) >= 5 * 8, "{} images", images(&html));

    let html = eval_page(&data, &out, "zeroshot", "16");
    assert!(html.contains("aria-label=\"confusion matrix\""));
    // Every evaluated (single-object) image, up to 12, is shown with its labels.
    let evaluated: usize = html
        .split("images evaluated</td><td class=\"num\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|n| n.parse().ok())
        .expect("the page states how many images were evaluated");
    assert!(evaluated > 0);
    assert_eq!(images(&html), evaluated.min(12));

    let html = eval_page(&data, &out, "caption", "6");
    assert!(html.contains("Captions beside their images"));
    assert_eq!(images(&html), 6);
    assert!(html.contains("chip"), "attributes are marked");

    let html = eval_page(&data, &out, "vqa", "1");
    assert!(html.contains("Accuracy per question type"));
    assert!(html.contains("<td>count</td>") || html.contains("<td>color</td>"));
}

#[test]
fn eval_report_refuses_a_file_as_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("page");
    std::fs::write(&file, "x").unwrap();
    let e = fails(&[
        "eval",
        "--task",
        "zeroshot",
        "--data",
        "nowhere",
        "--report",
        file.to_str().unwrap(),
    ]);
    assert!(e.contains("--report") && e.contains("is a file"), "{e}");
}

const CLIP_CONFIG: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
}"#;

#[test]
fn training_prints_its_report_and_runs_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        seed: 3,
        count: 24,
        image_size: 32,
        val_fraction: 0.0,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    let data = tmp.path().join("data");
    synth::generate(&cfg, &data, |_, _| {}).unwrap();
    let config = tmp.path().join("clip.json");
    std::fs::write(&config, CLIP_CONFIG).unwrap();
    let mut runs = Vec::new();
    for (name, lr) in [("a", "1e-3"), ("b", "3e-3")] {
        let run = tmp.path().join(name);
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[model]\nkind = \"clip\"\nconfig = \"{}\"\nseed = 3\n\
                 [data]\ntrain = \"{}\"\nshuffle_buffer = 8\nworkers = 1\n\
                 [optim]\nbatch_size = 4\nmax_steps = 4\nlr = {lr}\nwarmup_steps = 1\n\
                 [run]\nout = \"{}\"\nlog_every = 1\ncheckpoint_every = 2\n",
                config.display(),
                data.display(),
                run.display()
            ),
        )
        .unwrap();
        let recipe = recipe.to_str().unwrap();
        // Stopped after two updates and resumed: the page marks the resume.
        let o = glimpse(&["train", "--recipe", recipe, "--stop-after", "2"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = glimpse(&["train", "--resume", run.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let page = run.join("report.html");
        assert!(
            stdout(&o).contains(&format!("report: {}", page.display())),
            "{}",
            stdout(&o)
        );
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("resumed at update 2"), "resume not shown");
        assert_eq!(page_problems(&html, &run), Vec::<String>::new());
        runs.push(run);
    }
    let both = tmp.path().join("both.html");
    let o = glimpse(&[
        "report",
        "--run",
        runs[0].to_str().unwrap(),
        "--run",
        runs[1].to_str().unwrap(),
        "--out",
        both.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&both).unwrap();
    let loss = html.split("aria-label=\"total loss\"").nth(1).unwrap();
    assert_eq!(
        loss[..loss.find("</svg>").unwrap()]
            .matches("<polyline")
            .count(),
        2
    );

    let e = fails(&["report", "--run", tmp.path().join("nope").to_str().unwrap()]);
    assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
    let e = fails(&[
        "report",
        "--run",
        runs[0].to_str().unwrap(),
        "--run",
        runs[1].to_str().unwrap(),
    ]);
    assert!(e.contains("--out"), "{e}");
    std::fs::write(runs[0].join("log.jsonl"), "{\"step\": 1}\nnot json\n").unwrap();
    let e = fails(&["report", "--run", runs[0].to_str().unwrap()]);
    assert!(e.contains("log.jsonl line 1"), "{e}");
}
