//! The report pages of the runs and evaluation reports a server is pointed at: drawn
//! from the run's log at each request, so a training that goes on shows its progress.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::*;

fn fake_run(root: &Path, name: &str, steps: u64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("recipe.toml"),
        "[model]\nkind = \"clip\"\n[optim]\nlr = 1e-4\n",
    )
    .unwrap();
    let mut log = String::new();
    for s in 1..=steps {
        let loss = 3.0 / (1.0 + s as f64 / 50.0);
        let _ = writeln!(
            log,
            r#"{{"step":{s},"epoch":0,"loss":{loss},"lr":0.0001,"grad_norm":1.0,"samples_per_s":40.0,"itc":{loss}}}"#
        );
    }
    std::fs::write(dir.join("log.jsonl"), log).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_reports_are_served_as_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let a = fake_run(tmp.path(), "clip-a", 40);
    let b = fake_run(tmp.path(), "clip-b", 60);
    let report = tmp.path().join("eval-caption");
    std::fs::create_dir_all(&report).unwrap();
    std::fs::copy(
        repo("docs/reports/eval-caption.html"),
        report.join("index.html"),
    )
    .unwrap();
    let state = state_with(|c| {
        c.models.truncate(1);
        c.runs = vec![a.clone(), b];
        c.reports = vec![report.clone()];
    });

    let r = get(&state, "/runs").await;
    assert_eq!(r.status, 200);
    let listing = r.text();
    assert!(
        listing.contains("/runs/0") && listing.contains("/runs/all"),
        "{listing}"
    );

    let r = get(&state, "/runs/0").await;
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains("clip-a") && page.contains("<svg"),
        "no plot for the run"
    );
    let problems = glimpse_report::check::page_problems(&page, tmp.path());
    assert!(problems.is_empty(), "{problems:?}");

    // The page follows the log: more updates, a longer page.
    let before = page.len();
    let mut log = std::fs::read_to_string(a.join("log.jsonl")).unwrap();
    for s in 41..=400 {
        let _ = writeln!(
            log,
            r#"{{"step":{s},"epoch":0,"loss":0.5,"lr":0.0001,"grad_norm":1.0,"samples_per_s":40.0,"itc":0.5}}"#
        );
    }
    std::fs::write(a.join("log.jsonl"), log).unwrap();
    let r = get(&state, "/runs/0").await;
    assert!(
        r.text().contains("400"),
        "the page does not show update 400"
    );
    assert_ne!(r.text().len(), before);

    let r = get(&state, "/runs/all").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("clip-a") && r.text().contains("clip-b"));

    let r = get(&state, "/reports/0").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        std::fs::read_to_string(report.join("index.html")).unwrap()
    );

    for missing in ["/runs/7", "/runs/x", "/reports/3"] {
        let r = get(&state, missing).await;
        assert_eq!(r.status, 404, "{missing}");
        assert!(!r.message().is_empty());
    }
}
