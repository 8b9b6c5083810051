use super::*;
use crate::execute::{ImageRef, Input, Retrieved, Scored};

fn img(k: &str) -> Option<ImageRef> {
    Some(ImageRef {
        label: format!("image {k}"),
        path: format!("/data/{k}.png"),
    })
}

fn done(id: usize, task: &str, items: Vec<Item>) -> TaskReport {
    TaskReport {
        id,
        task: task.into(),
        model: "m".into(),
        state: TaskState::Done { items },
        seconds: 0.0,
    }
}

fn itm(id: usize, k: &str, text: &str, score: f32) -> TaskReport {
    done(
        id,
        "image-text-matching",
        vec![Item {
            input: Input {
                image: img(k),
                text: Some(text.into()),
                ..Input::default()
            },
            output: Output::Score { score },
        }],
    )
}

fn caption(id: usize, k: &str, text: &str) -> TaskReport {
    done(
        id,
        "image-to-text",
        vec![Item {
            input: Input {
                image: img(k),
                ..Input::default()
            },
            output: Output::Text { text: text.into() },
        }],
    )
}

#[test]
fn matches_across_images_are_compared_directly() {
    let reports = vec![
        itm(0, "1", "a red circle", 0.12),
        itm(1, "2", "a red circle", 0.93),
        itm(2, "3", "a red circle", 0.05),
        caption(3, "2", "a red circle and a blue square"),
    ];
    let a = write_answer(&reports);
    assert!(
        a.starts_with(
            "image 2 matches \"a red circle\" best (0.93); then image 1 (0.12), image 3 (0.05)."
        ),
        "{a}"
    );
    assert!(
        a.contains("image 2: \"a red circle and a blue square\""),
        "{a}"
    );
}

#[test]
fn one_match_is_a_yes_or_a_no_and_counts_are_digits() {
    let mut reports = vec![itm(0, "1", "two green squares", 0.81)];
    reports.push(done(
        1,
        "visual-question-answering",
        vec![Item {
            input: Input {
                image: img("1"),
                question: Some("how many squares are there?".into()),
                ..Input::default()
            },
            output: Output::Text { text: "two".into() },
        }],
    ));
    let a = write_answer(&reports);
    assert!(
        a.contains("Does image 1 match \"two green squares\"? yes (0.81)."),
        "{a}"
    );
    assert!(
        a.contains("\"how many squares are there?\" 2 (\"two\")"),
        "{a}"
    );
    let a = write_answer(&[itm(0, "1", "a cat", 0.2)]);
    assert!(a.contains("? no (0.20)"), "{a}");
}

#[test]
fn labels_over_images_name_the_best_image_per_label() {
    let labels = |r: f32| {
        vec![
            Scored {
                label: "red circle".into(),
                score: r,
            },
            Scored {
                label: "blue square".into(),
                score: 1.0 - r,
            },
        ]
    };
    let item = |k: &str, r: f32| Item {
        input: Input {
            image: img(k),
            labels: Some(vec!["red circle".into(), "blue square".into()]),
            ..Input::default()
        },
        output: Output::Labels { labels: labels(r) },
    };
    let reports = vec![
        done(0, "zero-shot-image-classification", vec![item("1", 0.3)]),
        done(1, "zero-shot-image-classification", vec![item("2", 0.9)]),
    ];
    let a = write_answer(&reports);
    assert!(
        a.contains("\"red circle\": image 2 (0.90)")
            && a.contains("\"blue square\": image 1 (0.70)"),
        "{a}"
    );
}

#[test]
fn retrieved_images_and_what_their_captions_share() {
    let found = done(
        0,
        "image-to-image-retrieval",
        vec![Item {
            input: Input {
                image: img("1"),
                ..Input::default()
            },
            output: Output::Images {
                images: vec![
                    Retrieved {
                        key: "000012".into(),
                        path: "/c/000012.png".into(),
                        score: 0.91,
                        text: None,
                    },
                    Retrieved {
                        key: "000044".into(),
                        path: "/c/000044.png".into(),
                        score: 0.88,
                        text: Some("a big red circle".into()),
                    },
                ],
            },
        }],
    );
    let caps = done(
        1,
        "image-to-text",
        [
            "a small red circle on the left",
            "a big red circle at the top",
        ]
        .iter()
        .zip(["000012", "000044"])
        .map(|(t, k)| Item {
            input: Input {
                image: img(k),
                ..Input::default()
            },
            output: Output::Text {
                text: t.to_string(),
            },
        })
        .collect(),
    );
    let a = write_answer(&[found, caps]);
    assert!(a.contains("image 000012 (0.91, /c/000012.png)"), "{a}");
    assert!(
        a.contains("image 000044: \"a big red circle at the top\""),
        "{a}"
    );
    assert!(a.contains("All 2 share: red, circle."), "{a}");
}

#[test]
fn failures_and_skips_are_stated() {
    let reports = vec![
        TaskReport {
            id: 0,
            task: "object-detection".into(),
            model: "detector".into(),
            state: TaskState::Failed {
                error: "tool `detector`: exited with 3".into(),
            },
            seconds: 0.0,
        },
        TaskReport {
            id: 1,
            task: "image-to-text".into(),
            model: "m".into(),
            state: TaskState::Skipped {
                reason: "task 0 failed".into(),
            },
            seconds: 0.0,
        },
    ];
    let a = write_answer(&reports);
    assert!(
        a.contains("Task 0 (object-detection) failed: tool `detector`: exited with 3."),
        "{a}"
    );
    assert!(
        a.contains("Task 1 (image-to-text) was skipped because task 0 failed."),
        "{a}"
    );
}

#[test]
fn no_placeholder_survives_in_an_answer() {
    // Models and tools may echo references and placeholders; none reach the answer.
    let reports = vec![
        caption(0, "1", "see <resource>-0 and [path] for <image>-2"),
        itm(1, "2", "the object in [image]", 0.7),
        done(
            2,
            "text-generation",
            vec![Item {
                input: Input {
                    text: Some("<resource>-1".into()),
                    ..Input::default()
                },
                output: Output::Text {
                    text: "[result] is at [PATH] <resource>-".into(),
                },
            }],
        ),
    ];
    let a = write_answer(&reports);
    for bad in [
        "<resource>",
        "<image>",
        "[path]",
        "[PATH]",
        "[image]",
        "[result]",
    ] {
        assert!(!a.contains(bad), "{bad} survived in {a}");
    }
    assert!(
        a.contains("see the result of task 0 and  for image 2"),
        "{a}"
    );
    // Brackets that are not placeholders stay.
    assert_eq!(scrub("a [red] circle [x]"), "a [red] circle [x]");
}
