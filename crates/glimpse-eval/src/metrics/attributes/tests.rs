//! The checker against the generator itself: every clean caption of a single-object
//! sample must pass, every caption with one attribute word swapped must fail.

use super::*;

use glimpse_synth::{sample, SynthConfig, CORRUPTIONS, NUMBER_WORDS as SYNTH_NUMBERS};
use serde_json::{json, Value};

fn config(noise: f64) -> SynthConfig {
    SynthConfig {
        seed: 3,
        count: 1_000_000,
        noise,
        image_size: 16,
        jitter: 0.0,
        ..SynthConfig::default()
    }
}

/// The records of the single-object samples among the first `n` indices.
fn single_object_records(noise: f64, n: u64) -> Vec<Value> {
    let cfg = config(noise);
    (0..n)
        .map(|i| sample(&cfg, i).record)
        .filter(|r| r.objects.len() == 1)
        .map(|r| serde_json::to_value(&r).unwrap())
        .collect()
}

fn record(shape: &str, color: &str, size: &str, position: &str, bg: (&str, &str)) -> Value {
    json!({
        "objects": [{"shape": shape, "color": color, "size": size, "position": position,
                     "bbox": [0, 0, 1, 1]}],
        "background": {"style": bg.0, "color": bg.1},
        "count": 1,
    })
}

fn captions(r: &Value) -> Vec<&str> {
    r["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect()
}

#[test]
fn vocabularies_agree_with_the_generator() {
    for (_, style) in STYLE_WORDS {
        assert!(BACKGROUND_STYLES.contains(&style), "{style}");
    }
    assert_eq!(&NUMBER_WORDS[..SYNTH_NUMBERS.len()], &SYNTH_NUMBERS[..]);
}

#[test]
fn every_clean_caption_of_the_generator_is_correct() {
    let records = single_object_records(0.0, 1500);
    assert!(
        records.len() > 400,
        "only {} single-object samples",
        records.len()
    );
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        for c in captions(r) {
            let check = caption_attributes_correct(c, r).unwrap();
            assert!(check.all_correct, "{c:?} judged {check:?}\nrecord {r}");
            // Remember which caption forms were exercised (the words that are not
            // attribute words).
            let form: Vec<&str> = c
                .split(' ')
                .filter(|w| {
                    color_word(w).is_none()
                        && !SHAPES.iter().any(|s| s.0 == *w)
                        && !SIZES.iter().any(|s| s.0 == *w)
                        && !is_position_word(w)
                        && style_word(w).is_none()
                        && !matches!(*w, "a" | "an")
                })
                .collect();
            seen.insert(form.join(" "));
        }
    }
    // Templates 0-6, 8 and 9 of synth/text.rs, as forms.
    for form in [
        "in the",
        "on background",
        "image of",
        "picture showing",
        "there is",
        "one",
        "",
    ] {
        assert!(
            seen.contains(form),
            "caption form {form:?} never generated: {seen:?}"
        );
    }
}

/// Every other word of the same kind as `w`, with the attribute a swap must break.
fn swaps(w: &str) -> Vec<(String, &'static str)> {
    let others = |list: Vec<&'static str>, what: &'static str| -> Vec<(String, &'static str)> {
        list.into_iter()
            .filter(|x| *x != w)
            .map(|x| (x.to_string(), what))
            .collect()
    };
    if SHAPES.iter().any(|s| s.0 == w) {
        others(SHAPES.iter().map(|s| s.0).collect(), "shape")
    } else if color_word(w).is_some() {
        others(COLORS.iter().map(|c| c.0).collect(), "color or background")
    } else if SIZES.iter().any(|s| s.0 == w) {
        others(SIZES.iter().map(|s| s.0).collect(), "size")
    } else if is_position_word(w) {
        others(
            vec!["top", "middle", "bottom", "left", "center", "right"],
            "position",
        )
    } else if let Some(style) = style_word(w) {
        STYLE_WORDS
            .iter()
            .filter(|s| s.1 != style)
            .map(|s| (s.0.to_string(), "background"))
            .collect()
    } else if w == "one" {
        others(vec!["zero", "two", "three", "four", "5"], "count")
    } else {
        Vec::new()
    }
}

#[test]
fn a_caption_with_one_attribute_swapped_is_wrong() {
    let records = single_object_records(0.0, 300);
    let mut tried = std::collections::BTreeMap::<&str, usize>::new();
    for r in &records {
        for c in captions(r) {
            let words: Vec<&str> = c.split(' ').collect();
            for (at, w) in words.iter().enumerate() {
                for (other, what) in swaps(w) {
                    let mut v: Vec<&str> = words.clone();
                    v[at] = &other;
                    let swapped = v.join(" ");
                    let check = caption_attributes_correct(&swapped, r).unwrap();
                    let broken = match what {
                        "shape" => check.shape == Judgement::Wrong,
                        "color or background" => {
                            check.color == Judgement::Wrong || check.background == Judgement::Wrong
                        }
                        "size" => check.size == Judgement::Wrong,
                        "position" => check.position == Judgement::Wrong,
                        "background" => check.background == Judgement::Wrong,
                        _ => check.count == Judgement::Wrong,
                    };
                    assert!(
                        broken && !check.all_correct && !check.mistakes.is_empty(),
                        "{swapped:?} (from {c:?}) should have a wrong {what}: {check:?}"
                    );
                    *tried.entry(what).or_default() += 1;
                }
            }
        }
    }
    for what in [
        "shape",
        "color or background",
        "size",
        "position",
        "background",
        "count",
    ] {
        assert!(
            tried.get(what).copied().unwrap_or(0) > 20,
            "few {what} swaps: {tried:?}"
        );
    }
}

#[test]
fn the_generators_corrupted_captions_are_wrong() {
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for r in single_object_records(1.0, 600) {
        let kind = r["corruption"].as_str().unwrap().to_string();
        let caption = r["caption"].as_str().unwrap();
        let check = caption_attributes_correct(caption, &r).unwrap();
        if kind != "truncated" {
            // A truncated caption can still be a right one ("a red circle in the").
            assert!(!check.all_correct, "{kind}: {caption:?} judged {check:?}");
        }
        *by_kind.entry(kind).or_default() += 1;
    }
    assert_eq!(by_kind.len(), CORRUPTIONS.len(), "{by_kind:?}");
}

#[test]
fn hand_written_cases() {
    let r = record("circle", "red", "small", "top left", ("checker", "blue"));
    let ok = |c: &str| caption_attributes_correct(c, &r).unwrap();

    let c = ok("A small red circle, in the top-left? No: in the TOP LEFT.");
    // "topleft" is no position word; "top left" is right.
    assert!(c.all_correct, "{c:?}");
    assert_eq!(c.position, Judgement::Correct);

    let c = ok("a red circle");
    assert!(c.all_correct);
    assert_eq!(
        [c.size, c.position, c.count, c.background],
        [Judgement::NotMentioned; 4]
    );

    let c = ok("a red circle on a checkered blue background");
    assert_eq!(
        (c.color, c.background),
        (Judgement::Correct, Judgement::Correct)
    );
    let c = ok("a red circle on a blue background");
    assert_eq!(c.background, Judgement::Correct);
    let c = ok("a red circle on a red background");
    assert_eq!(
        (c.color, c.background),
        (Judgement::Correct, Judgement::Wrong)
    );
    assert_eq!(c.mistakes, ["background: says red, it is blue"]);
    let c = ok("a red circle on a gradient blue background");
    assert_eq!(c.background, Judgement::Wrong);
    // A colour outside the background phrase is the object's.
    let c = ok("a blue circle on a background");
    assert_eq!(
        (c.color, c.background),
        (Judgement::Wrong, Judgement::NotMentioned)
    );

    let c = ok("red circles");
    assert_eq!((c.shape, c.count), (Judgement::Correct, Judgement::Wrong));
    let c = ok("1 red circle");
    assert_eq!(c.count, Judgement::Correct);
    let c = ok("a red circle in the middle");
    assert_eq!(c.position, Judgement::Wrong);
    let c = ok("a red circle and a red star");
    assert_eq!(c.shape, Judgement::Wrong);

    for c in ["", "a circle", "a red shape", "stock photo 42", "red"] {
        assert!(!ok(c).all_correct, "{c:?}");
    }
}

#[test]
fn bad_records_are_errors() {
    let e = caption_attributes_correct("a red circle", &json!({"objects": []})).unwrap_err();
    assert!(e.to_string().starts_with("record:"), "{e}");
    let mut two = record("circle", "red", "small", "top left", ("solid", "blue"));
    let obj = two["objects"][0].clone();
    two["objects"].as_array_mut().unwrap().push(obj);
    let e = caption_attributes_correct("a red circle", &two).unwrap_err();
    assert!(e.to_string().contains("holds 2 objects"), "{e}");
    let odd = record("blob", "red", "small", "top left", ("solid", "blue"));
    let e = caption_attributes_correct("a red circle", &odd).unwrap_err();
    assert!(e.to_string().contains("shape \"blob\""), "{e}");
}
