//! `glimpse_eval` on the tiny random fixture models and a small synthetic
//! dataset. Random models score near chance, so these tests check the plumbing: the
//! counts, the ranges, batch independence, skip accounting and the errors; the record
//! rules are checked on hand-written records.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use glimpse_data::tar::TarWriter;
use glimpse_eval::{
    evaluate, qa_pairs, reference_captions, retrieval_texts, synth_labels, zero_shot_label,
    EvalOptions, EvalReport, LabelSource, Metrics, QaPair, Task,
};
use glimpse_models::pipeline::Pipeline;
use glimpse_synth::{self as synth, SynthConfig};
use serde_json::{json, Value};

const SAMPLES: u64 = 30;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn load(name: &str) -> Pipeline {
    Pipeline::load(&fixture(name), &Device::Cpu).expect("fixture loads")
}

/// 30 synthetic samples (one shard) plus a shard holding one corrupt image, and the
/// records of the good samples in file order.
struct Data {
    _dir: tempfile::TempDir,
    path: String,
    records: Vec<Value>,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            seed: 3,
            count: SAMPLES,
            image_size: 32,
            jitter: 0.0,
            val_fraction: 0.0,
            test_fraction: 0.0,
            ..SynthConfig::default()
        };
        synth::generate(&cfg, dir.path(), |_, _| {}).unwrap();
        let records = (0..SAMPLES)
            .map(|i| serde_json::to_value(synth::sample(&cfg, i).record).unwrap())
            .collect();
        // Sorts after train/: read last.
        let bad: PathBuf = dir.path().join("zz-corrupt.tar");
        let mut tar = TarWriter::new(std::fs::File::create(&bad).unwrap());
        tar.append("broken.png", b"\x89PNG\r\n\x1a\nnot really")
            .unwrap();
        tar.append("broken.json", br#"{"caption": "a red circle"}"#)
            .unwrap();
        tar.finish().unwrap();
        Data {
            path: dir.path().display().to_string(),
            _dir: dir,
            records,
        }
    })
}

fn options(task: Task) -> EvalOptions {
    let mut o = EvalOptions::new(task);
    o.batch_size = 8;
    o.generation.max_new_tokens = 6;
    o
}

fn run(model: &str, opts: &EvalOptions) -> EvalReport {
    evaluate(&load(model), model, &data().path, opts).expect("evaluation runs")
}

fn unit(x: f64, what: &str) {
    assert!((0.0..=1.0).contains(&x), "{what} = {x} is outside [0, 1]");
}

fn single_object(r: &Value) -> bool {
    r["objects"].as_array().unwrap().len() == 1
}

// ---------------------------------------------------------------- record rules

#[test]
fn retrieval_texts_prefer_the_clean_caption_then_all_captions() {
    let synth = json!({"caption": "a blue circle", "clean_caption": "a red circle",
                       "captions": ["a red circle", "red round thing"]});
    assert_eq!(retrieval_texts(&synth), vec!["a red circle"]);
    let coco = json!({"caption": "one", "captions": ["one", "two", " "]});
    assert_eq!(retrieval_texts(&coco), vec!["one", "two"]);
    assert_eq!(
        retrieval_texts(&json!({"caption": " a dog "})),
        vec!["a dog"]
    );
    assert!(retrieval_texts(&json!({"caption": "  "})).is_empty());
    assert!(retrieval_texts(&json!({"label": "dog"})).is_empty());
}

#[test]
fn references_are_all_captions_else_the_caption() {
    let r = json!({"caption": "x", "captions": ["a", "b", "c"]});
    assert_eq!(reference_captions(&r), vec!["a", "b", "c"]);
    assert_eq!(reference_captions(&json!({"caption": "x"})), vec!["x"]);
    assert!(reference_captions(&json!({"captions": []})).is_empty());
}

#[test]
fn zero_shot_labels_come_from_the_field_or_one_synthetic_object() {
    let one = json!({"objects": [{"shape": "circle", "color": "red"}]});
    assert_eq!(
        zero_shot_label(&one),
        Some(("red circle".into(), LabelSource::Synth))
    );
    let two = json!({"objects": [{"shape": "circle", "color": "red"},
                                 {"shape": "star", "color": "blue"}]});
    assert_eq!(zero_shot_label(&two), None);
    let labelled = json!({"label": "cat", "objects": [{"shape": "circle", "color": "red"}]});
    assert_eq!(
        zero_shot_label(&labelled),
        Some(("cat".into(), LabelSource::Field))
    );
    assert_eq!(zero_shot_label(&json!({"caption": "a cat"})), None);
    let all = synth_labels();
    assert_eq!(all.len(), 70);
    assert_eq!(all[0], "red circle");
    assert!(all.contains(&"black heart".to_string()));
}

#[test]
fn questions_come_from_qa_or_top_level_fields() {
    let synth = json!({"qa": [{"question": "what color is it?", "answer": "red"},
                              {"question": "  ", "answer": "x"},
                              {"question": "how many?", "answer": ""}]});
    assert_eq!(
        qa_pairs(&synth),
        vec![QaPair {
            question: "what color is it?".into(),
            answers: vec!["red".into()]
        }]
    );
    let vqa = json!({"question": "what is it?",
                     "answers": [{"answer": "cat"}, "kitten", {"answer_id": 3}]});
    assert_eq!(qa_pairs(&vqa)[0].answers, vec!["cat", "kitten"]);
    assert!(qa_pairs(&json!({"question": "unanswered?"})).is_empty());
}

#[test]
fn tasks_parse_and_options_are_checked() {
    assert_eq!("zeroshot".parse::<Task>().unwrap(), Task::ZeroShot);
    assert_eq!("Zero-Shot".parse::<Task>().unwrap(), Task::ZeroShot);
    let e = "detect".parse::<Task>().unwrap_err().to_string();
    assert!(e.contains("unknown task \"detect\""), "{e}");

    let mut o = EvalOptions::new(Task::ZeroShot);
    o.template = "no slot".into();
    assert!(o.validate().unwrap_err().to_string().contains("--template"));
    let mut o = EvalOptions::new(Task::Caption);
    o.rerank = Some(5);
    assert!(o.validate().unwrap_err().to_string().contains("--rerank"));
    let mut o = EvalOptions::new(Task::Vqa);
    o.batch_size = 0;
    assert!(o
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--batch-size"));
}

// ---------------------------------------------------------------- with models

#[test]
fn retrieval_counts_ranges_and_batch_independence() {
    let r = run("clip", &options(Task::Retrieval));
    assert_eq!(r.samples, SAMPLES as usize);
    assert_eq!(r.skipped, 1, "{:?}", r.skipped_reasons);
    assert!(
        r.skipped_reasons[0].contains("broken"),
        "{:?}",
        r.skipped_reasons
    );
    let Metrics::Retrieval(m) = &r.metrics else {
        panic!("retrieval metrics")
    };
    assert_eq!((m.n_images, m.n_texts), (30, 30));
    for d in [&m.i2t, &m.t2i] {
        for x in [d.r1, d.r5, d.r10] {
            unit(x, "recall");
        }
        assert!(d.r1 <= d.r5 && d.r5 <= d.r10);
        assert!((1.0..=30.0).contains(&d.mean_rank));
    }

    // Batches of 8 and 32 give the same figures.
    let mut o = options(Task::Retrieval);
    o.batch_size = 32;
    let Metrics::Retrieval(big) = run("clip", &o).metrics else {
        panic!()
    };
    assert_eq!(
        serde_json::to_value(&big).unwrap(),
        serde_json::to_value(m).unwrap()
    );

    o.limit = Some(5);
    let r = run("clip", &o);
    assert_eq!(r.samples, 5);
    assert_eq!(r.skipped, 0);

    // One image, one text: every figure is perfect.
    o.limit = Some(1);
    let Metrics::Retrieval(one) = run("clip", &o).metrics else {
        panic!()
    };
    assert_eq!((one.i2t.r1, one.t2i.r1, one.r_mean), (1.0, 1.0, 1.0));
    assert_eq!((one.i2t.mean_rank, one.t2i.median_rank), (1.0, 1.0));
}

#[test]
fn coco_images_own_all_their_captions() {
    // 3 images with 2, 1 and 3 captions; one image without any is skipped.
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a.png", "b.png", "c.png", "d.png"].iter().enumerate() {
        let px = image::Rgb([60 * i as u8, 200 - 40 * i as u8, 90]);
        image::RgbImage::from_pixel(24, 24, px)
            .save(dir.path().join(name))
            .unwrap();
    }
    let coco = json!({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                   {"id": 3, "file_name": "c.png"}, {"id": 4, "file_name": "d.png"}],
        "annotations": [
            {"image_id": 1, "caption": "a red circle"}, {"image_id": 3, "caption": "a star"},
            {"image_id": 1, "caption": "a round red thing"}, {"image_id": 2, "caption": "a cat"},
            {"image_id": 3, "caption": "a yellow star"}, {"image_id": 3, "caption": "one star"}
        ]
    });
    let path = dir.path().join("captions.json");
    std::fs::write(&path, coco.to_string()).unwrap();
    let clip = load("clip");
    let r = evaluate(
        &clip,
        "clip",
        path.to_str().unwrap(),
        &options(Task::Retrieval),
    )
    .unwrap();
    assert_eq!((r.samples, r.skipped), (3, 1));
    assert!(
        r.skipped_reasons[0].contains("sample 4: no caption"),
        "{:?}",
        r.skipped_reasons
    );
    let Metrics::Retrieval(m) = &r.metrics else {
        panic!()
    };
    assert_eq!((m.n_images, m.n_texts), (3, 6));
    // With 3 images every text finds its image within 3: R@5 is 1 both ways.
    assert_eq!((m.i2t.r5, m.t2i.r5), (1.0, 1.0));
    assert!(m.t2i.mean_rank <= 3.0 && m.i2t.mean_rank <= 6.0);
}

#[test]
fn rerank_with_itm_rescores_the_top_k() {
    let mut o = options(Task::Retrieval);
    o.limit = Some(12);
    let Metrics::Retrieval(plain) = run("blip_itm", &o).metrics else {
        panic!()
    };
    o.rerank = Some(3);
    let Metrics::Retrieval(m) = run("blip_itm", &o).metrics else {
        panic!()
    };
    assert_eq!(m.rerank, Some(3));
    assert_eq!(m.n_images, 12);
    for x in [m.i2t.r1, m.i2t.r5, m.t2i.r1, m.t2i.r10, m.r_mean] {
        unit(x, "recall");
    }
    // Re-ranking only reorders within the top 3: hits at 5 and 10 stay hits.
    assert_eq!((m.i2t.r5, m.i2t.r10), (plain.i2t.r5, plain.i2t.r10));
    assert_eq!((m.t2i.r5, m.t2i.r10), (plain.t2i.r5, plain.t2i.r10));
}

#[test]
fn zero_shot_uses_single_object_records_and_the_label_set() {
    let r = run("clip", &options(Task::ZeroShot));
    let single = data().records.iter().filter(|r| single_object(r)).count();
    assert!(
        single > 0 && single < SAMPLES as usize,
        "{single} single-object records"
    );
    assert_eq!(r.samples, single);
    assert_eq!(r.skipped, 1 + SAMPLES as usize - single);
    let Metrics::ZeroShot(m) = &r.metrics else {
        panic!()
    };
    assert_eq!(m.n_labels, 70);
    unit(m.accuracy, "accuracy");
    unit(m.mean_per_class_accuracy, "mean per class");
    assert_eq!(m.per_class.iter().map(|c| c.support).sum::<usize>(), single);

    // A restricted label set drops the images whose label is outside it.
    let first = zero_shot_label(data().records.iter().find(|r| single_object(r)).unwrap())
        .unwrap()
        .0;
    let mut o = options(Task::ZeroShot);
    o.labels = Some(vec![first.clone(), "nothing like it".into()]);
    let r = run("clip", &o);
    let Metrics::ZeroShot(m) = &r.metrics else {
        panic!()
    };
    assert_eq!(m.n_labels, 2);
    let with_first = data()
        .records
        .iter()
        .filter(|r| zero_shot_label(r).is_some_and(|l| l.0 == first))
        .count();
    assert_eq!(r.samples, with_first);
    assert!(r
        .skipped_reasons
        .iter()
        .any(|s| s.contains("not in the label set")));

    // A single label cannot be missed: the label plumbing gives a perfect score.
    o.labels = Some(vec![first]);
    let Metrics::ZeroShot(m) = run("clip", &o).metrics else {
        panic!()
    };
    assert_eq!((m.accuracy, m.n_images), (1.0, with_first));
}

#[test]
fn caption_scores_and_attribute_tallies() {
    let r = run("blip_caption", &options(Task::Caption));
    assert_eq!(r.samples, SAMPLES as usize);
    assert_eq!(r.skipped, 1);
    let Metrics::Caption(m) = &r.metrics else {
        panic!()
    };
    for b in m.bleu {
        unit(b, "BLEU");
    }
    assert_eq!(m.bleu4, m.bleu[3]);
    assert!(m.cider >= 0.0 && m.cider <= 10.0);
    assert_eq!(m.examples.len(), 10);
    assert_eq!(m.examples[0].key, "000000");
    assert_eq!(m.examples[0].reference, data().records[0]["captions"][0]);
    let single = data().records.iter().filter(|r| single_object(r)).count();
    let a = m
        .attributes
        .as_ref()
        .expect("synthetic records are checked");
    assert_eq!(a.n_images, single);
    unit(a.all_correct, "all correct");
    for t in [a.shape, a.color, a.size, a.position, a.count, a.background] {
        assert_eq!(t.correct + t.wrong + t.not_mentioned, single);
    }
    for (e, rec) in m.examples.iter().zip(&data().records) {
        assert_eq!(e.all_correct.is_some(), single_object(rec), "{}", e.key);
    }
}

#[test]
fn vqa_asks_every_question_of_the_first_images() {
    let mut o = options(Task::Vqa);
    o.limit = Some(3);
    o.generation.max_new_tokens = 4;
    let r = run("blip_vqa", &o);
    assert_eq!(r.samples, 3);
    let Metrics::Vqa(m) = &r.metrics else {
        panic!()
    };
    let questions: usize = data().records[..3]
        .iter()
        .map(|r| r["qa"].as_array().unwrap().len())
        .sum();
    assert_eq!((m.n_images, m.n_questions), (3, questions));
    unit(m.accuracy, "accuracy");
    assert_eq!(
        m.examples[0].question,
        data().records[0]["qa"][0]["question"]
    );
    assert_eq!(m.examples.len(), questions.min(10));
}

#[test]
fn models_that_cannot_do_the_task_are_refused_before_reading() {
    let clip = load("clip");
    let e = evaluate(
        &clip,
        "tools/fixtures/clip",
        &data().path,
        &options(Task::Caption),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tools/fixtures/clip")
            && e.contains("CLIPModel")
            && e.contains("--task caption"),
        "{e}"
    );
    // Checked before the data: a missing directory is not what is reported.
    let e = evaluate(&clip, "clip", "/no/such/dir", &options(Task::Vqa))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--task vqa"), "{e}");
    let mut o = options(Task::Retrieval);
    o.rerank = Some(2);
    let e = evaluate(&clip, "clip", &data().path, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--rerank needs an ITM head"), "{e}");
}

#[test]
fn missing_or_unusable_data_is_an_error_naming_it() {
    let clip = load("clip");
    let e = evaluate(&clip, "clip", "/no/such/dir", &options(Task::Retrieval))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/dir"), "{e}");

    // A JSONL whose records carry no caption: nothing to evaluate, say why.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    image::RgbImage::new(8, 8).save(&img).unwrap();
    let jsonl = dir.path().join("x.jsonl");
    std::fs::write(&jsonl, "{\"image\": \"a.png\", \"label\": \"cat\"}\n").unwrap();
    let e = evaluate(
        &clip,
        "clip",
        jsonl.to_str().unwrap(),
        &options(Task::Retrieval),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no usable sample") && e.contains("no caption"),
        "{e}"
    );
}

// ---------------------------------------------------------------- evidence

#[test]
fn evidence_is_kept_only_when_asked_and_names_only_images_it_holds() {
    use glimpse_eval::evidence::TaskEvidence;
    assert!(run("clip", &options(Task::Retrieval)).evidence.is_none());
    let with = |task| {
        let mut o = options(task);
        o.evidence = true;
        o
    };

    let r = run("clip", &with(Task::Retrieval));
    let ev = r.evidence.expect("retrieval evidence");
    let TaskEvidence::Retrieval { queries } = &ev.task else {
        panic!("{:?}", ev.task)
    };
    assert!(!queries.is_empty() && queries.len() <= 12);
    for q in queries {
        assert_eq!(q.top.len(), 5);
        assert!(q.top.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
        let found = q.top.iter().position(|(k, _)| *k == q.truth);
        match found {
            Some(i) => assert_eq!(q.rank, i + 1, "{}", q.text),
            None => assert!(q.rank > 5),
        }
        for k in q.top.iter().map(|(k, _)| k).chain([&q.truth]) {
            assert!(ev.images.contains_key(k), "no thumbnail of {k}");
        }
    }
    // The text of a query describes its true image.
    let q = &queries[0];
    let i: usize = q.truth.parse().unwrap();
    assert_eq!(retrieval_texts(&data().records[i]), vec![q.text.clone()]);

    let r = run("clip", &with(Task::ZeroShot));
    let ev = r.evidence.expect("zero-shot evidence");
    let TaskEvidence::ZeroShot {
        confusion,
        examples,
    } = &ev.task
    else {
        panic!()
    };
    let total: usize = confusion.counts.iter().flatten().sum();
    assert_eq!(total, r.samples, "every image is in the matrix once");
    let Metrics::ZeroShot(m) = &r.metrics else {
        panic!()
    };
    let diagonal: usize = (0..confusion.labels.len())
        .map(|i| confusion.counts[i][i])
        .sum();
    assert!((diagonal as f64 / total as f64 - m.accuracy).abs() < 1e-9);
    assert_eq!(examples.len(), r.samples.min(12));
    assert!(examples.iter().all(|e| ev.images.contains_key(&e.key)));

    let r = run("blip_caption", &with(Task::Caption));
    let ev = r.evidence.expect("caption evidence");
    let TaskEvidence::Caption { items } = &ev.task else {
        panic!()
    };
    assert!(items.len() >= 6 && items.len() <= 12);
    for c in items {
        let i: usize = c.key.parse().unwrap();
        assert_eq!(c.references, reference_captions(&data().records[i]));
        assert_eq!(c.attributes.is_empty(), !single_object(&data().records[i]));
        assert!(ev.images.contains_key(&c.key));
    }

    let mut o = with(Task::Vqa);
    o.limit = Some(2);
    o.generation.max_new_tokens = 4;
    let r = run("blip_vqa", &o);
    let Metrics::Vqa(m) = &r.metrics else {
        panic!()
    };
    let ev = r.evidence.expect("vqa evidence");
    let TaskEvidence::Vqa { by_type, wrong } = &ev.task else {
        panic!()
    };
    let (right, total) = by_type
        .iter()
        .fold((0, 0), |(a, b), t| (a + t.correct, b + t.total));
    assert_eq!(total, m.n_questions);
    assert!((right as f64 / total as f64 - m.accuracy).abs() < 1e-9);
    // At most two wrong answers per image are shown.
    assert!(wrong.len() <= (total - right).min(4) && !wrong.is_empty());
    assert!(wrong.iter().all(|w| ev.images.contains_key(&w.key)));
}
