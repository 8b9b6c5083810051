//! Greedy and beam search against the reference: every case recorded by
//! `tools/make_generate_fixtures.py` must give identical ids.

mod common;

use common::{prompt_tensor, Toy, ToyCache};
use glimpse_generate::{generate, EarlyStopping, GenerationConfig};
use serde_json::Value;

fn fixtures() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/generate/cases.json"
    );
    let text = std::fs::read_to_string(path).expect("run tools/make_generate_fixtures.py");
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn config_of(case: &Value) -> GenerationConfig {
    let n = |k: &str| case[k].as_u64().unwrap() as usize;
    let f = |k: &str| case[k].as_f64().unwrap() as f32;
    GenerationConfig {
        max_new_tokens: n("max_new_tokens"),
        min_new_tokens: n("min_new_tokens"),
        num_beams: n("num_beams"),
        num_return_sequences: n("num_return_sequences"),
        length_penalty: f("length_penalty"),
        repetition_penalty: f("repetition_penalty"),
        early_stopping: serde_json::from_value::<EarlyStopping>(case["early_stopping"].clone())
            .unwrap(),
        eos_token_ids: serde_json::from_value(case["eos_token_ids"].clone()).unwrap(),
        pad_token_id: n("pad_token_id") as u32,
        no_repeat_ngram_size: n("no_repeat_ngram_size"),
        length_decay: case["exponential_decay_length_penalty"]
            .as_array()
            .map(|a| {
                (
                    a[0].as_u64().unwrap() as usize,
                    a[1].as_f64().unwrap() as f32,
                )
            }),
        ..GenerationConfig::default()
    }
}

fn toy_of(case: &Value) -> Toy {
    Toy {
        eos: serde_json::from_value(case["eos_token_ids"].clone()).unwrap(),
        eos_bias: case["eos_bias"].as_f64().unwrap() as f32,
    }
}

#[test]
fn toy_logits_match_the_reference_bit_for_bit() {
    let fx = fixtures();
    let check = &fx["check_logits"];
    let prefix: Vec<u32> = serde_json::from_value(check["prefix"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(check["logits"].clone()).unwrap();
    let toy = Toy {
        eos: vec![2],
        eos_bias: 0.0,
    };
    assert_eq!(toy.logits_of(&prefix), want);
}

#[test]
fn every_recorded_case_is_identical() {
    let fx = fixtures();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "fixture has only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = config_of(case);
        let prompts = ids(&case["prompts"]);
        let mut cache = ToyCache::default();
        let got = generate(&toy_of(case), &mut cache, &prompt_tensor(&prompts), &cfg).unwrap();
        let want = ids(&case["expected"]);
        if got != want {
            failures.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
        // The reference's raw rows are ours followed by nothing but fill.
        for (ours, raw) in got.iter().zip(ids(&case["raw"])) {
            assert_eq!(&raw[..ours.len()], ours.as_slice(), "{name}");
            let fill = &raw[ours.len()..];
            assert!(
                fill.windows(2).all(|w| w[0] == w[1]),
                "{name}: fill {fill:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rows of a batch never influence each other: each row alone gives the same ids.
#[test]
fn batch_rows_equal_single_rows() {
    let fx = fixtures();
    for case in fx["cases"].as_array().unwrap() {
        let prompts = ids(&case["prompts"]);
        if prompts.len() < 2 {
            continue;
        }
        let cfg = config_of(case);
        let toy = toy_of(case);
        let batch = generate(
            &toy,
            &mut ToyCache::default(),
            &prompt_tensor(&prompts),
            &cfg,
        )
        .unwrap();
        let per = cfg.num_return_sequences;
        for (i, p) in prompts.iter().enumerate() {
            let one = generate(
                &toy,
                &mut ToyCache::default(),
                &prompt_tensor(std::slice::from_ref(p)),
                &cfg,
            )
            .unwrap();
            assert_eq!(
                one,
                batch[i * per..(i + 1) * per],
                "{} row {i}",
                case["name"]
            );
        }
    }
}

/// After beam search the cache follows the surviving beams: every row's prefix is
/// its prompt followed by generated tokens, and there is one row per beam.
#[test]
fn beam_search_reorders_the_cache() {
    let toy = Toy {
        eos: vec![2],
        eos_bias: 2.5,
    };
    let prompts = vec![vec![1, 7, 9], vec![30, 3, 17]];
    let cfg = GenerationConfig {
        num_beams: 4,
        max_new_tokens: 6,
        eos_token_ids: vec![2],
        ..Default::default()
    };
    let mut cache = ToyCache::default();
    generate(&toy, &mut cache, &prompt_tensor(&prompts), &cfg).unwrap();
    assert_eq!(cache.prefixes.len(), 8);
    for (r, prefix) in cache.prefixes.iter().enumerate() {
        assert_eq!(&prefix[..3], prompts[r / 4].as_slice());
        assert!(
            !prefix[3..].contains(&2),
            "a running beam went on after eos: {prefix:?}"
        );
    }
}
