//! The command-line contract (DESIGN.md) on the committed reference fixtures: the
//! binary's `--json` output equals what `transformers` recorded, and bad input gives a
//! non-zero exit with a message that names it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn embed_matches_reference_features() {
    let (meta, t) = reference("clip");
    let texts = strings(&meta["texts"]);
    let model = fixture("clip");
    let mut args = vec!["embed", "--model", model.to_str().unwrap(), "--json"];
    let photos = strings(&meta["photos"]);
    let paths: Vec<String> = photos.iter().map(|p| photo(p)).collect();
    for p in &paths {
        args.extend(["--image", p]);
    }
    for text in &texts {
        args.extend(["--text", text]);
    }
    let out = json(&args);
    let image_embeds = out["image_embeds"].as_array().unwrap();
    let text_embeds = out["text_embeds"].as_array().unwrap();
    assert_eq!(image_embeds.len(), photos.len());
    assert_eq!(text_embeds.len(), texts.len());
    for (i, e) in image_embeds.iter().enumerate() {
        assert_close(
            &format!("image {}", photos[i]),
            &floats(e),
            &row(&t["image_embeds"], i),
            1e-4,
        );
    }
    for (i, e) in text_embeds.iter().enumerate() {
        assert_close(
            &format!("text {:?}", texts[i]),
            &floats(e),
            &row(&t["text_embeds"], i),
            1e-4,
        );
    }
}

#[test]
fn classify_matches_reference_probabilities() {
    let (meta, t) = reference("clip");
    let c = &meta["classify"];
    let labels = strings(&c["labels"]).join(",");
    let model = fixture("clip");
    let image = photo(c["image"].as_str().unwrap());
    let out = json(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &image,
        "--labels",
        &labels,
        "--template",
        c["template"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(strings(&out["labels"]), strings(&c["labels"]));
    let key = c["probs_key"].as_str().unwrap();
    let want: Vec<f32> = t[key].flatten_all().unwrap().to_vec1().unwrap();
    assert_close("classify probs", &floats(&out["probs"]), &want, 1e-4);
}

#[test]
fn match_gives_itc_and_itm_for_blip_retrieval() {
    check_match_against_reference("blip_itm");
}

#[test]
fn match_on_clip_has_no_itm() {
    let model = fixture("clip");
    let out = json(&[
        "match",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &photo("cat"),
        "--text",
        "a cat",
        "--text",
        "a cup of coffee",
        "--json",
    ]);
    assert_eq!(floats(&out["itc"]).len(), 2);
    assert!(out.get("itm").is_none());
}

#[test]
fn caption_greedy_beam_and_prompted_ids_equal_reference() {
    let (meta, _) = reference("blip_caption");
    let model = fixture("blip_caption");
    let max_new = meta["generation"]["max_new_tokens"].to_string();
    let photos = strings(&meta["photos"]);
    let paths: Vec<String> = photos.iter().map(|p| photo(p)).collect();
    let mut base = vec![
        "caption",
        "--model",
        model.to_str().unwrap(),
        "--max-new-tokens",
        &max_new,
        "--json",
    ];
    for p in &paths {
        base.extend(["--image", p]);
    }

    let greedy = json(&base);
    let want = meta["greedy_generated"].as_array().unwrap();
    for (i, got) in greedy["token_ids"].as_array().unwrap().iter().enumerate() {
        assert_eq!(ids(got), ids(&want[i]), "greedy ids for {}", photos[i]);
    }
    assert_eq!(
        strings(&greedy["captions"]),
        strings(&meta["greedy_text"]),
        "greedy captions"
    );

    let beams = meta["generation"]["num_beams"].to_string();
    let mut args = base.clone();
    args.extend(["--beams", &beams]);
    let beam = json(&args);
    let want = meta["beam_generated"].as_array().unwrap();
    for (i, got) in beam["token_ids"].as_array().unwrap().iter().enumerate() {
        assert_eq!(ids(got), ids(&want[i]), "beam ids for {}", photos[i]);
    }

    let prompted = &meta["prompted"];
    let mut args = base.clone();
    args.extend(["--prompt", prompted["prompt"].as_str().unwrap()]);
    let out = json(&args);
    let want = prompted["generated"].as_array().unwrap();
    for (i, got) in out["token_ids"].as_array().unwrap().iter().enumerate() {
        assert_eq!(ids(got), ids(&want[i]), "prompted ids for {}", photos[i]);
    }
    assert_eq!(strings(&out["captions"]), strings(&prompted["text"]));
}

#[test]
fn caption_batches_give_the_same_answer_as_single_images() {
    let model = fixture("blip_caption");
    let (a, b) = (photo("cat"), photo("coffee"));
    let m = model.to_str().unwrap();
    let both = json(&[
        "caption", "--model", m, "--image", &a, "--image", &b, "--json",
    ]);
    let one = json(&["caption", "--model", m, "--image", &b, "--json"]);
    assert_eq!(both["token_ids"][1], one["token_ids"][0]);
    let batched = json(&[
        "caption",
        "--model",
        m,
        "--image",
        &a,
        "--image",
        &b,
        "--batch-size",
        "1",
        "--json",
    ]);
    assert_eq!(both, batched);
}

#[test]
fn ask_answers_as_the_reference() {
    let (meta, _) = reference("blip_vqa");
    let model = fixture("blip_vqa");
    let max_new = meta["generation"]["max_new_tokens"].to_string();
    let questions = strings(&meta["questions"]);
    let answers = &meta["vqa"]["answers_ids"]; // [photo][question]
    for (p, stem) in strings(&meta["photos"]).iter().enumerate() {
        let image = photo(stem);
        for (q, question) in questions.iter().enumerate() {
            let out = json(&[
                "ask",
                "--model",
                model.to_str().unwrap(),
                "--image",
                &image,
                "--question",
                question,
                "--max-new-tokens",
                &max_new,
                "--json",
            ]);
            assert_eq!(
                ids(&out["token_ids"]),
                ids(&answers[p][q]),
                "{stem}: {question}"
            );
            assert_eq!(
                out["answer"].as_str().unwrap(),
                meta["vqa"]["answers"][p][q].as_str().unwrap()
            );
        }
    }
}

#[test]
fn people_output_names_each_image() {
    let model = fixture("blip_caption");
    let out = glimpse(&[
        "caption",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &photo("cat"),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("examples/images/cat.png: "), "{text}");
}

#[test]
fn broken_images_are_errors_that_name_the_file() {
    let model = fixture("blip_caption");
    for bad in [
        "tools/fixtures/images/truncated.png",
        "tools/fixtures/images/not_an_image.jpg",
        "examples/images/no_such_file.png",
    ] {
        let err = fails(&[
            "caption",
            "--model",
            model.to_str().unwrap(),
            "--image",
            bad,
        ]);
        let name = Path::new(bad).file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name),
            "error for {bad} does not name it: {err}"
        );
    }
}

#[test]
fn model_problems_are_errors_that_name_them() {
    let err = fails(&[
        "embed",
        "--model",
        "tools/fixtures/does_not_exist",
        "--text",
        "x",
    ]);
    assert!(err.contains("does_not_exist"), "{err}");

    // A task the model cannot do names the class it is and what it would need.
    let clip = fixture("clip");
    let err = fails(&[
        "caption",
        "--model",
        clip.to_str().unwrap(),
        "--image",
        &photo("cat"),
    ]);
    assert!(
        err.contains("CLIPModel") && err.contains("BlipForConditionalGeneration"),
        "{err}"
    );

    // A hub id that is not in the local cache fails clearly instead of hanging.
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["embed", "--model", "nobody/no-such-model", "--text", "x"])
        .env("HF_HUB_CACHE", root().join("target/empty-hub-cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody/no-such-model"), "{err}");
}

#[test]
fn bad_arguments_are_errors_that_name_them() {
    let clip = fixture("clip");
    let m = clip.to_str().unwrap();
    let cat = photo("cat");
    let err = fails(&["embed", "--model", m, "--text", "  "]);
    assert!(err.contains("empty text"), "{err}");
    let err = fails(&["embed", "--model", m]);
    assert!(err.contains("--image") && err.contains("--text"), "{err}");
    let err = fails(&[
        "classify",
        "--model",
        m,
        "--image",
        &cat,
        "--labels",
        "a,b",
        "--template",
        "no slot",
    ]);
    assert!(err.contains("--template"), "{err}");
    let err = fails(&[
        "classify", "--model", m, "--image", &cat, "--labels", "a,,b",
    ]);
    assert!(err.contains("label #2"), "{err}");
    let err = fails(&["embed", "--model", m, "--text", "x", "--device", "tpu"]);
    assert!(err.contains("tpu"), "{err}");

    let blip = fixture("blip_caption");
    let b = blip.to_str().unwrap();
    let err = fails(&["caption", "--model", b, "--image", &cat, "--top-p", "1.5"]);
    assert!(err.contains("top_p"), "{err}");
    let err = fails(&[
        "caption",
        "--model",
        b,
        "--image",
        &cat,
        "--max-new-tokens",
        "0",
    ]);
    assert!(err.contains("--max-new-tokens"), "{err}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let blip = fixture("blip_caption");
    let b = blip.to_str().unwrap();
    let cat = photo("cat");
    let run = |seed: &str| {
        json(&[
            "caption",
            "--model",
            b,
            "--image",
            &cat,
            "--top-p",
            "0.9",
            "--temperature",
            "1.5",
            "--seed",
            seed,
            "--json",
        ])
    };
    assert_eq!(run("7"), run("7"));
}
