//! BLIP-2 against the reference (transformers 5.24 on PyTorch): the tiny random-weight
//! checkpoints and outputs in `tools/fixtures/blip2_{opt,t5,itm}` (written by
//! `tools/fixtures/make_fixtures_llm.py`). Hidden states, logits and scores must agree
//! to 1e-4 (1e-3 on a GPU, `GLIMPSE_TEST_DEVICE=cuda`); generated ids exactly.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_models::blip2::{
    vqa_prompt, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval,
};
use glimpse_models::checkpoint::ModelFiles;
use serde_json::Value;

mod common;

use common::{assert_close, Fixture};

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn id_row(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// The fixture's generation settings for `num_beams` beams, with the model's end/pad.
fn gen_config(
    fx: &Fixture,
    model: &Blip2ForConditionalGeneration,
    beams: usize,
) -> GenerationConfig {
    let g = &fx.json["generation"];
    let gen = model.generation_config(&GenerationConfig {
        max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
        num_beams: beams,
        length_penalty: g["length_penalty"].as_f64().unwrap() as f32,
        ..GenerationConfig::default()
    });
    assert_eq!(
        gen.eos_token_ids,
        vec![g["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(gen.pad_token_id, g["pad_token_id"].as_u64().unwrap() as u32);
    gen
}

fn load(fx: &Fixture) -> Blip2ForConditionalGeneration {
    Blip2ForConditionalGeneration::load(&fx.files, &fx.device).unwrap()
}

/// Vision, Q-Former, projection and full-forward logits on the first photo.
fn check_forward(name: &str, decoder_input_ids: bool) {
    let fx = Fixture::open(name);
    let model = load(&fx);
    let px = fx.pixels(&fx.photos()[0]);
    let image = model.vision(&px, false).unwrap();
    assert_close(
        "vision last_hidden_state",
        &image,
        &fx.get("vision_last_hidden_state"),
    );
    let queries = model.query_outputs(&image, false).unwrap();
    assert_close(
        "qformer last_hidden_state",
        &queries,
        &fx.get("qformer_last_hidden_state"),
    );
    let projected = model.project(&queries).unwrap();
    assert_close(
        "language_projection",
        &projected,
        &fx.get("language_projection"),
    );
    assert_close(
        "image_prompt",
        &model.image_prompt(&px).unwrap(),
        &projected,
    );
    let dec = decoder_input_ids.then(|| fx.get("decoder_input_ids"));
    let mask = fx.get("attention_mask");
    let logits = model
        .logits(&px, &fx.get("input_ids"), Some(&mask), dec.as_ref())
        .unwrap();
    assert_close("logits", &logits, &fx.get("logits"));
}

#[test]
fn opt_vision_qformer_projection_and_logits_match_reference() {
    check_forward("blip2_opt", false);
}

#[test]
fn t5_vision_qformer_projection_and_logits_match_reference() {
    check_forward("blip2_t5", true);
}

/// The processor's ids for each case, built from the prompt text with the checkpoint's
/// tokenizer, and greedy / beam ids for every photo, one call per photo.
fn check_generation(name: &str) {
    let fx = Fixture::open(name);
    let model = load(&fx);
    let tok = fx.tokenizer();
    let forward_text = fx.json["forward"]["text"].as_str().unwrap();
    assert_eq!(
        model.prompt_ids(&tok, Some(forward_text)).unwrap(),
        id_row(&fx.json["forward"]["input_ids"]),
        "processor ids of {forward_text:?}"
    );
    let prompted = fx.json["prompted"]["prompt"].as_str().unwrap();
    let vqa = fx.json["vqa"]["prompt"].as_str().unwrap();
    let question = vqa
        .strip_prefix("Question: ")
        .and_then(|q| q.strip_suffix(" Answer:"))
        .unwrap();
    assert_eq!(vqa, vqa_prompt(question));
    let cases = [
        ("unprompted", None, 1),
        ("beam", None, 3),
        ("prompted", Some(prompted), 1),
        ("vqa", Some(vqa), 1),
    ];
    for (case, prompt, beams) in cases {
        let c = &fx.json[case];
        let input_ids = model.prompt_ids(&tok, prompt).unwrap();
        assert_eq!(input_ids, id_row(&c["input_ids"]), "{case}: processor ids");
        let want = ids(&c["generated"]);
        let gen = gen_config(&fx, &model, beams);
        for (i, photo) in fx.photos().iter().enumerate() {
            let text_ids = prompt.map(|p| tok.encode(p, true).unwrap());
            let got = model
                .generate(&fx.pixels(photo), text_ids.as_deref(), &gen)
                .unwrap();
            assert_eq!(got, vec![want[i].clone()], "{name} {case}: ids for {photo}");
        }
    }
    // A batch of photos gives what each photo gives alone.
    let batch = model
        .generate(&fx.photo_batch(), None, &gen_config(&fx, &model, 1))
        .unwrap();
    assert_eq!(
        batch,
        ids(&fx.json["unprompted"]["generated"]),
        "{name}: batched greedy"
    );
}

#[test]
fn opt_greedy_beam_prompted_and_vqa_ids_match_reference() {
    check_generation("blip2_opt");
}

#[test]
fn t5_greedy_beam_prompted_and_vqa_ids_match_reference() {
    check_generation("blip2_t5");
}

/// Feeding `continuation` one token at a time through the cache gives the logits that
/// one full forward gives at the same positions.
fn stepwise_logits(
    model: &Blip2ForConditionalGeneration,
    px: &Tensor,
    prompt: &Tensor,
    first: &Tensor,
    continuation: &[u32],
) -> Tensor {
    let mut cache = model.new_cache(px, prompt, None).unwrap();
    let mut rows = vec![model.step(first, &mut cache).unwrap()];
    for &t in continuation {
        let next = Tensor::new(&[[t]], px.device()).unwrap();
        rows.push(model.step(&next, &mut cache).unwrap());
    }
    Tensor::stack(&rows, 1).unwrap() // [1, 1 + n, V]
}

#[test]
fn t5_cached_decoding_equals_teacher_forced_logits() {
    let fx = Fixture::open("blip2_t5");
    let model = load(&fx);
    let px = fx.pixels(&fx.photos()[0]);
    let (input_ids, dec) = (fx.get("input_ids"), fx.get("decoder_input_ids"));
    let dec_row = dec.to_vec2::<u32>().unwrap().remove(0);
    let stepped = stepwise_logits(
        &model,
        &px,
        &input_ids,
        &dec.narrow(1, 0, 1).unwrap(),
        &dec_row[1..],
    );
    assert_close("stepwise T5 logits", &stepped, &fx.get("logits"));
}

#[test]
fn opt_cached_decoding_equals_full_forward_logits() {
    let fx = Fixture::open("blip2_opt");
    let model = load(&fx);
    let px = fx.pixels(&fx.photos()[0]);
    let full_ids = fx.get("input_ids");
    let row = full_ids.to_vec2::<u32>().unwrap().remove(0);
    // The prompt is everything up to the bos after the placeholders; the rest is fed
    // token by token.
    let q = model.config().num_query_tokens + 1;
    let prompt = full_ids.narrow(1, 0, q).unwrap();
    let stepped = stepwise_logits(&model, &px, &prompt, &prompt, &row[q..]);
    let want = fx
        .get("logits")
        .narrow(1, q - 1, row.len() - q + 1)
        .unwrap();
    assert_close("stepwise OPT logits", &stepped, &want);
}

#[test]
fn itc_and_itm_match_reference() {
    let fx = Fixture::open("blip2_itm");
    let model = Blip2ForImageTextRetrieval::load(&fx.files, &fx.device).unwrap();
    let (input_ids, mask) = (fx.get("input_ids"), fx.get("attention_mask"));
    let photos = fx.photo_batch();
    let image = model.image_embeds(&photos).unwrap();
    assert_close("image_embeds", &image, &fx.get("image_embeds"));
    let text = model.text_embeds(&input_ids, Some(&mask)).unwrap();
    assert_close("text_embeds", &text, &fx.get("text_embeds"));
    let itc = model.itc(&photos, &input_ids, Some(&mask)).unwrap();
    assert_close("itc", &itc, &fx.get("itc"));
    let rows: Vec<Tensor> = fx
        .photos()
        .iter()
        .map(|p| {
            model
                .itm_probs(&fx.pixels(p), &input_ids, Some(&mask))
                .unwrap()
        })
        .collect();
    assert_close(
        "itm_probs",
        &Tensor::stack(&rows, 0).unwrap(),
        &fx.get("itm_probs"),
    );
    // One image per text gives the same as one shared image.
    let first = fx.pixels(&fx.photos()[0]);
    let n_texts = input_ids.dim(0).unwrap();
    let per_text = first.repeat((n_texts, 1, 1, 1)).unwrap();
    let again = model.itm_probs(&per_text, &input_ids, Some(&mask)).unwrap();
    assert_close("itm_probs, image repeated", &again, &rows[0]);
    let err = model
        .itm_probs(&photos, &input_ids, Some(&mask))
        .unwrap_err()
        .to_string();
    let expected = format!("{} images for {n_texts} texts", fx.photos().len());
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn generation_model_refuses_a_retrieval_checkpoint_by_name() {
    // The retrieval checkpoint lacks `language_model.*`; the error names a missing tensor.
    let fx = Fixture::open("blip2_itm");
    let err = Blip2ForConditionalGeneration::load(&fx.files, &fx.device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("language_model"), "{err}");
}

#[test]
fn older_checkpoint_layout_loads_and_agrees() {
    // Published checkpoints predating transformers 5: Q-Former projections under
    // `attention.self.*` and the vision bias as `q_bias`/`v_bias` (no key bias, which
    // shifts every score of a query equally and so changes nothing).
    let fx = Fixture::open("blip2_opt");
    let dir = tempfile::tempdir().unwrap();
    let stored = candle_core::safetensors::load(&fx.files.weights[0], &Device::Cpu).unwrap();
    let mut old = HashMap::new();
    for (name, t) in stored {
        if let Some(prefix) = name.strip_suffix("self_attn.qkv.bias") {
            let d = t.dim(0).unwrap() / 3;
            old.insert(
                format!("{prefix}self_attn.q_bias"),
                t.narrow(0, 0, d).unwrap(),
            );
            old.insert(
                format!("{prefix}self_attn.v_bias"),
                t.narrow(0, 2 * d, d).unwrap(),
            );
        } else {
            let renamed = name
                .replace("attention.attention.", "attention.self.")
                .replace("crossattention.attention.", "crossattention.self.");
            old.insert(renamed, t);
        }
    }
    assert!(old.keys().any(|k| k.contains("crossattention.self.query")));
    candle_core::safetensors::save(&old, dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(&fx.files.config, dir.path().join("config.json")).unwrap();
    let files = ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap();
    let model = Blip2ForConditionalGeneration::load(&files, &fx.device).unwrap();
    let px = fx.pixels(&fx.photos()[0]);
    let mask = fx.get("attention_mask");
    let logits = model
        .logits(&px, &fx.get("input_ids"), Some(&mask), None)
        .unwrap();
    assert_close("logits, older layout", &logits, &fx.get("logits"));
}
