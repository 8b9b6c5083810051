//! Report pages built from generated run directories and evaluation reports: a page
//! has its plots and images, no broken reference and no external resource; hostile
//! text is escaped; a 10,000-update run stays small; several runs overlay; a bad log
//! line is an error naming the file and line, an incomplete last one is skipped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use glimpse_eval::evidence::{
    CaptionEvidence, ConfusionMatrix, Evidence, QuestionTypeRow, RetrievalQuery, TaskEvidence,
    Thumbnail, VqaEvidence, ZeroShotExample,
};
use glimpse_eval::metrics::Judgement;
use glimpse_eval::{
    CaptionMetrics, Direction, EvalReport, Metrics, RetrievalMetrics, Task, VqaMetrics,
    ZeroShotMetrics,
};
use glimpse_report::check::page_problems;
use glimpse_report::{run_report, write_eval_report, write_run_report, Error};

const RECIPE: &str = "[model]\nkind = \"blip\"\n[optim]\nlr = 1e-4\n[run]\nlog_every = 1\n";

/// A run directory like `glimpse train` leaves: `steps` logged updates with ITC, ITM
/// and LM losses, a validation every 500 updates, a resume at `resume_at`.
fn fake_run(root: &Path, name: &str, steps: u64, resume_at: Option<u64>, lr: f64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("checkpoints/step-00000100")).unwrap();
    std::fs::write(dir.join("checkpoints/step-00000100/trainer.json"), "{}").unwrap();
    std::fs::write(dir.join("checkpoints/latest"), "step-00000100\n").unwrap();
    std::fs::write(
        dir.join("recipe.toml"),
        RECIPE.replace("1e-4", &lr.to_string()),
    )
    .unwrap();
    let mut log = String::new();
    for s in 1..=steps {
        let x = s as f64;
        let itc = 3.0 / (1.0 + x / 300.0) + 0.05 * (x * 0.37).sin();
        let (itm, lm) = (0.7 - 0.2 * x / steps as f64, 5.0 / (1.0 + x / 100.0));
        let _ = writeln!(
            log,
            r#"{{"step":{s},"epoch":{},"loss":{},"lr":{},"grad_norm":{},"samples_per_s":{},"itc":{itc},"itm":{itm},"lm":{lm}}}"#,
            s / 1000,
            itc + itm + lm,
            lr * (1.0 - x / steps as f64),
            1.0 + (x * 0.11).cos(),
            40.0 + (x * 0.05).sin()
        );
        if s % 500 == 0 {
            let _ = writeln!(
                log,
                r#"{{"step":{s},"validation":{{"retrieval":{{"r1_i2t":{},"r5_i2t":{}}},"loss":{}}}}}"#,
                x / steps as f64 * 0.5,
                x / steps as f64 * 0.9,
                4.0 - x / steps as f64
            );
        }
        if Some(s) == resume_at {
            let _ = writeln!(
                log,
                r#"{{"step":{s},"resumed":{{"epoch":0,"position":{}}}}}"#,
                s * 32
            );
        }
    }
    std::fs::write(dir.join("log.jsonl"), log).unwrap();
    dir
}

#[test]
fn a_run_page_has_every_plot_and_no_broken_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fake_run(tmp.path(), "blip-run", 1200, Some(600), 1e-4);
    let w = write_run_report(std::slice::from_ref(&run), None).unwrap();
    assert_eq!(w.path, run.join("report.html"));
    let html = std::fs::read_to_string(&w.path).unwrap();
    for title in [
        "total loss",
        "loss: itc",
        "loss: itm",
        "loss: lm",
        "learning rate",
        "samples/s",
        "retrieval.r5_i2t",
    ] {
        assert!(
            html.contains(&format!("aria-label=\"{title}\"")),
            "no plot {title}"
        );
    }
    // Every plot holds a curve with points: 4 losses, 3 schedule, 3 validation.
    assert_eq!(html.matches("<polyline").count(), 10);
    assert_eq!(html.matches("<svg class=\"plot\"").count(), 10);
    assert!(!html.contains("points=\"\""));
    // The resume is drawn and listed, the checkpoint and recipe shown.
    assert!(html.contains("resumed at update 600"));
    assert!(html.contains("step-00000100"));
    assert!(html.contains("kind = &quot;blip&quot;"));
    assert_eq!(page_problems(&html, tmp.path()), Vec::<String>::new());
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[test]
fn a_ten_thousand_update_page_stays_small() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fake_run(tmp.path(), "long", 10_000, Some(5_000), 3e-4);
    let log_bytes = std::fs::metadata(run.join("log.jsonl")).unwrap().len();
    let (html, warnings) = run_report(&[run]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // 7 update curves, each at most 4 points per pixel column of a 390 px plot.
    assert!(
        html.len() < 250_000,
        "page of {} bytes from a log of {log_bytes} bytes",
        html.len()
    );
    assert!(log_bytes > 1_500_000);
    let most = html
        .split("points=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].split(' ').count())
        .max()
        .unwrap();
    assert!(most <= 4 * 390, "a curve has {most} points");
}

#[test]
fn several_runs_overlay_with_a_legend_and_recipe_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let a = fake_run(tmp.path(), "qformer", 800, None, 1e-4);
    let b = fake_run(tmp.path(), "mlp", 600, Some(300), 2e-4);
    let out = tmp.path().join("compare.html");
    write_run_report(&[a, b], Some(&out)).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    // Each plot draws both runs; the legend names them.
    let loss = html.split("aria-label=\"total loss\"").nth(1).unwrap();
    let loss = &loss[..loss.find("</svg>").unwrap()];
    assert_eq!(loss.matches("<polyline").count(), 2);
    assert!(loss.contains(">qformer</text>") && loss.contains(">mlp</text>"));
    assert!(html.contains("Lines that differ from qformer"));
    assert!(html.contains("lr = 0.0002"));
    assert_eq!(page_problems(&html, tmp.path()), Vec::<String>::new());
    // Several runs need a destination.
    let e = write_run_report(&[tmp.path().join("qformer"), tmp.path().join("mlp")], None);
    assert!(matches!(e, Err(Error::Invalid(_))));
}

#[test]
fn a_corrupt_log_line_is_an_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fake_run(tmp.path(), "bad", 20, None, 1e-4);
    let log = run.join("log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[6] = r#"{"step": 7, "loss": 1.0"#;
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let e = run_report(std::slice::from_ref(&run))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("log.jsonl line 7") && e.contains("not JSON"),
        "{e}"
    );
    // An event without a step is named too.
    lines[6] = r#"{"loss": 1.0}"#;
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let e = run_report(std::slice::from_ref(&run))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 7") && e.contains("step"), "{e}");
}

#[test]
fn an_incomplete_last_line_is_skipped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fake_run(tmp.path(), "killed", 20, None, 1e-4);
    let log = run.join("log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(r#"{"step":21,"epoch":0,"loss":1.2,"lr"#);
    std::fs::write(&log, text).unwrap();
    let (html, warnings) = run_report(std::slice::from_ref(&run)).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("line 21") && warnings[0].contains("incomplete"));
    assert!(html.contains("id=\"warnings\"") && html.contains("line 21"));
}

#[test]
fn a_missing_run_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = run_report(&[tmp.path().join("nope")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("not a directory"), "{e}");
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let e = run_report(&[tmp.path().join("empty")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no log.jsonl"), "{e}");
}

// ------------------------------------------------------------------ eval pages

fn thumb(seed: u8) -> Thumbnail {
    Thumbnail::of(&image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([seed.wrapping_mul(40), x as u8 * 8, y as u8 * 8])
    }))
}

fn report(task: Task, metrics: Metrics, ev: TaskEvidence, keys: &[&str]) -> EvalReport {
    EvalReport {
        task,
        model: "models/x".into(),
        data: "data/<val>".into(),
        samples: 3,
        skipped: 0,
        skipped_reasons: vec![],
        metrics,
        evidence: Some(Evidence {
            images: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.to_string(), thumb(i as u8)))
                .collect(),
            task: ev,
        }),
    }
}

const HOSTILE: &str = "<script>alert('x')</script> a red <b>circle</b>";

fn check_eval_page(r: &EvalReport, images: usize) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let w = write_eval_report(r, &tmp.path().join("rep")).unwrap();
    assert_eq!(w.path.file_name().unwrap(), "index.html");
    let html = std::fs::read_to_string(&w.path).unwrap();
    assert_eq!(
        page_problems(&html, w.path.parent().unwrap()),
        Vec::<String>::new()
    );
    assert!(
        html.matches("<img src=\"data:image/").count() >= images,
        "expected {images} images"
    );
    assert!(!html.contains("<script"), "hostile text was not escaped");
    html
}

#[test]
fn a_caption_page_shows_images_attributes_and_escapes_hostile_text() {
    let item = CaptionEvidence {
        key: "s1".into(),
        caption: HOSTILE.into(),
        references: vec!["a red circle".into()],
        attributes: vec![glimpse_eval::evidence::AttributeRow {
            name: "color",
            truth: "blue".into(),
            judgement: Judgement::Wrong,
        }],
        mistakes: vec!["color: says red, the object is blue".into()],
        all_correct: Some(false),
    };
    let m = Metrics::Caption(CaptionMetrics {
        bleu4: 0.5,
        bleu: [0.9, 0.8, 0.6, 0.5],
        cider: 2.0,
        n_images: 1,
        attributes: None,
        examples: vec![],
    });
    let r = report(
        Task::Caption,
        m,
        TaskEvidence::Caption { items: vec![item] },
        &["s1"],
    );
    let html = check_eval_page(&r, 1);
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("chip wrong") && html.contains("color: blue"));
    assert!(html.contains("data/&lt;val&gt;"));
}

#[test]
fn a_retrieval_page_shows_each_query_with_its_top_five() {
    let keys = ["a", "b", "c", "d", "e", "f"];
    let q = |text: &str, truth: &str, rank| RetrievalQuery {
        text: text.into(),
        truth: truth.into(),
        top: keys[..5].iter().map(|k| (k.to_string(), 0.5)).collect(),
        rank,
    };
    let m = Metrics::Retrieval(RetrievalMetrics {
        i2t: Direction {
            r1: 0.5,
            r5: 1.0,
            r10: 1.0,
            mean_rank: 1.5,
            median_rank: 1.0,
        },
        t2i: Direction {
            r1: 0.5,
            r5: 1.0,
            r10: 1.0,
            mean_rank: 1.5,
            median_rank: 1.0,
        },
        r_mean: 0.8,
        n_images: 6,
        n_texts: 6,
        rerank: None,
    });
    let ev = TaskEvidence::Retrieval {
        queries: vec![q("a red circle", "b", 2), q(HOSTILE, "f", 6)],
    };
    let html = check_eval_page(&report(Task::Retrieval, m, ev, &keys), 11);
    assert!(html.contains("right image at rank 2"));
    assert!(html.contains("not in the top 5 (rank 6)"));
    assert_eq!(
        html.matches("thumb hit").count(),
        2,
        "the right images are framed"
    );
}

#[test]
fn vqa_and_zero_shot_pages_show_types_mistakes_and_the_matrix() {
    let m = Metrics::Vqa(VqaMetrics {
        accuracy: 0.5,
        n_questions: 2,
        n_images: 1,
        examples: vec![],
    });
    let ev = TaskEvidence::Vqa {
        by_type: vec![QuestionTypeRow {
            question_type: "color".into(),
            correct: 1,
            total: 2,
        }],
        wrong: vec![VqaEvidence {
            key: "q1".into(),
            question: "what color is the <circle>?".into(),
            question_type: "color".into(),
            prediction: HOSTILE.into(),
            answers: vec!["red".into()],
        }],
    };
    let html = check_eval_page(&report(Task::Vqa, m, ev, &["q1"]), 1);
    assert!(html.contains("50.0%") && html.contains("what color is the &lt;circle&gt;?"));

    let labels: Vec<String> = ["red circle", "blue square", "<x>"]
        .map(String::from)
        .to_vec();
    let m = Metrics::ZeroShot(ZeroShotMetrics {
        accuracy: 0.5,
        mean_per_class_accuracy: 0.5,
        n_images: 2,
        n_labels: 3,
        template: "a {}.".into(),
        per_class: vec![],
    });
    let ev = TaskEvidence::ZeroShot {
        confusion: ConfusionMatrix::from_pairs(&labels, &[(0, 0), (0, 1), (2, 2)]),
        examples: vec![ZeroShotExample {
            key: "z1".into(),
            truth: "red circle".into(),
            predicted: "blue square".into(),
        }],
    };
    let html = check_eval_page(&report(Task::ZeroShot, m, ev, &["z1"]), 1);
    assert!(html.contains("aria-label=\"confusion matrix\""));
    assert!(html.contains("red circle → blue square: 1"));
    assert_eq!(
        html.matches("fill=\"rgba(").count(),
        3,
        "one cell per pair seen"
    );
    assert!(html.contains("&lt;x&gt;"));
}

#[test]
fn constant_validation_metrics_are_listed_not_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fake_run(tmp.path(), "c", 10, None, 1e-4);
    let mut log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    for s in [5, 10] {
        log.push_str(&format!(
            "{{\"step\":{s},\"validation\":{{\"images\":147,\"acc\":{}}}}}\n",
            s as f64 / 20.0
        ));
    }
    std::fs::write(run.join("log.jsonl"), log).unwrap();
    let (html, _) = run_report(&[run]).unwrap();
    assert!(html.contains("aria-label=\"acc\""));
    assert!(!html.contains("aria-label=\"images\""));
    assert!(html.contains("<code>images</code> = 147"));
}
