//! BLIP against the reference (transformers 5.24 on PyTorch): the tiny random-weight
//! checkpoints and outputs in `tools/fixtures/blip_*` (written by
//! `tools/fixtures/make_fixtures.py`). Logits, embeddings and probabilities must agree
//! to 1e-4 (1e-3 on a GPU, `GLIMPSE_TEST_DEVICE=cuda`); generated ids exactly.

use candle_core::{DType, Tensor};
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_models::blip::{
    BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering,
};
use serde_json::Value;

mod common;

use common::{assert_close, max_diff, tol, Fixture};

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// The fixture's generation settings for `num_beams` beams, with the model's end/pad.
fn gen_config(fx: &Fixture, num_beams: usize) -> GenerationConfig {
    let g = &fx.json["generation"];
    GenerationConfig {
        max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
        num_beams,
        length_penalty: g["length_penalty"].as_f64().unwrap() as f32,
        eos_token_ids: vec![g["eos_token_id"].as_u64().unwrap() as u32],
        pad_token_id: g["pad_token_id"].as_u64().unwrap() as u32,
        ..GenerationConfig::default()
    }
}

fn caption_model(fx: &Fixture) -> BlipForConditionalGeneration {
    BlipForConditionalGeneration::load(&fx.files, &fx.device).unwrap()
}

fn check_caption_forward(name: &str) {
    let fx = Fixture::open(name);
    let model = caption_model(&fx);
    let first = &fx.photos()[0];
    let image = model
        .vision(&fx.get(&format!("pixel_values.{first}")))
        .unwrap();
    assert_close("image_embeds", &image, &fx.get("image_embeds"));
    let logits = model
        .decoder_logits(&image, &fx.get("decoder_input_ids"), None)
        .unwrap();
    assert_close("decoder_logits", &logits, &fx.get("decoder_logits"));
}

#[test]
fn caption_vision_and_decoder_logits_match_reference() {
    check_caption_forward("blip_caption");
}

#[test]
fn caption_bf16_weights_match_reference_upcast() {
    check_caption_forward("blip_caption_bf16");
    let fx = Fixture::open("blip_caption_bf16");
    let model = caption_model(&fx);
    let want = ids(&fx.json["greedy_generated"]);
    for (i, photo) in fx.photos().iter().enumerate() {
        let px = fx.get(&format!("pixel_values.{photo}"));
        let got = model.generate(&px, None, &gen_config(&fx, 1)).unwrap();
        assert_eq!(got[0], want[i], "greedy caption of {photo}");
    }
}

#[test]
fn caption_greedy_beam_and_prompted_ids_match_reference() {
    let fx = Fixture::open("blip_caption");
    let model = caption_model(&fx);
    let greedy = ids(&fx.json["greedy_generated"]);
    let beam = ids(&fx.json["beam_generated"]);
    let p = &fx.json["prompted"];
    let prompt_ids: Vec<u32> = serde_json::from_value(p["prompt_input_ids"].clone()).unwrap();
    let decoder_prompt: Vec<u32> = serde_json::from_value(p["decoder_prompt_ids"].clone()).unwrap();
    assert_eq!(model.caption_prompt(Some(&prompt_ids)), decoder_prompt);
    assert_eq!(
        model.caption_prompt(None),
        vec![fx.json["generation"]["start_token_id"].as_u64().unwrap() as u32]
    );
    let prompted = ids(&p["generated"]);
    for (i, photo) in fx.photos().iter().enumerate() {
        // One image per call, as the reference was run.
        let px = fx.get(&format!("pixel_values.{photo}"));
        let got = model.generate(&px, None, &gen_config(&fx, 1)).unwrap();
        assert_eq!(got[0], greedy[i], "greedy caption of {photo}");
        let got = model.generate(&px, None, &gen_config(&fx, 3)).unwrap();
        assert_eq!(got[0], beam[i], "beam caption of {photo}");
        let got = model
            .generate(&px, Some(&prompt_ids), &gen_config(&fx, 1))
            .unwrap();
        assert_eq!(got[0], prompted[i], "prompted caption of {photo}");
    }
}

#[test]
fn cached_greedy_steps_equal_full_forward_logits() {
    let fx = Fixture::open("blip_caption");
    let model = caption_model(&fx);
    let image = model.vision(&fx.photo_batch()).unwrap(); // [3, n, d]
    let bos = model.config().text_config.bos_token_id;
    let b = image.dim(0).unwrap();
    let mut cache = model.new_cache(&image).unwrap();
    let mut seq = vec![vec![bos]; b];
    let mut step_logits = Vec::new();
    let mut next = Tensor::full(bos, (b, 1), &fx.device).unwrap();
    for _ in 0..8 {
        let logits = model.step(&next, &mut cache).unwrap(); // [b, V]
        let tok: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        for (s, t) in seq.iter_mut().zip(&tok) {
            s.push(*t);
        }
        step_logits.push(logits.unsqueeze(1).unwrap());
        next = Tensor::new(tok, &fx.device).unwrap().unsqueeze(1).unwrap();
    }
    let stepped = Tensor::cat(&step_logits, 1).unwrap(); // [b, 8, V]
    let t = seq[0].len();
    let full_ids = Tensor::new(seq.concat(), &fx.device)
        .unwrap()
        .reshape((b, t))
        .unwrap();
    let full = model.decoder_logits(&image, &full_ids, None).unwrap(); // [b, 9, V]
    let d = max_diff(&stepped, &full.narrow(1, 0, 8).unwrap());
    assert!(d < tol(1e-5), "cached vs full logits differ by {d:e}");
    // The batched greedy run also reproduces the reference, one image at a time.
    let want = ids(&fx.json["greedy_generated"]);
    for (row, w) in seq.iter().zip(&want) {
        let n = w.len().min(8);
        assert_eq!(row[1..1 + n], w[..n]);
    }
}

#[test]
fn a_batch_of_images_equals_one_at_a_time() {
    let fx = Fixture::open("blip_caption");
    let model = caption_model(&fx);
    let batch = fx.photo_batch();
    let greedy = ids(&fx.json["greedy_generated"]);
    let beam = ids(&fx.json["beam_generated"]);
    assert_eq!(
        model.generate(&batch, None, &gen_config(&fx, 1)).unwrap(),
        greedy
    );
    assert_eq!(
        model.generate(&batch, None, &gen_config(&fx, 3)).unwrap(),
        beam
    );
    let together = model.vision(&batch).unwrap();
    for i in 0..batch.dim(0).unwrap() {
        let alone = model.vision(&batch.narrow(0, i, 1).unwrap()).unwrap();
        let d = max_diff(&together.narrow(0, i, 1).unwrap(), &alone);
        assert!(d < tol(1e-5), "image {i}: batched vision differs by {d:e}");
    }
}

#[test]
fn retrieval_embeddings_itc_and_itm_match_reference() {
    let fx = Fixture::open("blip_itm");
    assert_eq!(fx.json["itm_first_token"], "cls");
    let model = BlipForImageTextRetrieval::load(&fx.files, &fx.device).unwrap();
    let px = fx.photo_batch();
    let (input_ids, mask) = (fx.get("input_ids"), fx.get("attention_mask"));
    assert_close(
        "image_embeds",
        &model.image_embeds(&px).unwrap(),
        &fx.get("image_embeds"),
    );
    assert_close(
        "text_embeds",
        &model.text_embeds(&input_ids, &mask).unwrap(),
        &fx.get("text_embeds"),
    );
    assert_close(
        "itc",
        &model.itc(&px, &input_ids, &mask).unwrap(),
        &fx.get("itc"),
    );
    let rows: Vec<Tensor> = (0..px.dim(0).unwrap())
        .map(|i| {
            model
                .itm_probs(&px.narrow(0, i, 1).unwrap(), &input_ids, &mask)
                .unwrap()
        })
        .collect();
    assert_close(
        "itm_probs",
        &Tensor::stack(&rows, 0).unwrap(),
        &fx.get("itm_probs"),
    );
}

#[test]
fn vqa_greedy_and_beam_answers_match_reference() {
    let fx = Fixture::open("blip_vqa");
    let model = BlipForQuestionAnswering::load(&fx.files, &fx.device).unwrap();
    let questions: Vec<Vec<u32>> = ids(&fx.json["question_token_ids"]);
    let vqa = &fx.json["vqa"];
    let greedy: Vec<Vec<Vec<u32>>> = serde_json::from_value(vqa["answers_ids"].clone()).unwrap();
    let beam: Vec<Vec<Vec<u32>>> = serde_json::from_value(vqa["beam_answers_ids"].clone()).unwrap();
    for (i, photo) in fx.photos().iter().enumerate() {
        let px = fx.get(&format!("pixel_values.{photo}"));
        for (j, q) in questions.iter().enumerate() {
            let q_ids = Tensor::new(q.as_slice(), &fx.device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let q_mask = q_ids.ones_like().unwrap();
            let got = model
                .generate(&px, &q_ids, &q_mask, &gen_config(&fx, 1))
                .unwrap();
            assert_eq!(got[0], greedy[i][j], "greedy answer, {photo}, question {j}");
            let got = model
                .generate(&px, &q_ids, &q_mask, &gen_config(&fx, 3))
                .unwrap();
            assert_eq!(got[0], beam[i][j], "beam answer, {photo}, question {j}");
        }
    }
}

#[test]
fn bad_checkpoints_and_inputs_are_errors_not_panics() {
    let fx = Fixture::open("blip_caption");
    // A captioning checkpoint has no text_encoder / heads for retrieval.
    let err = BlipForImageTextRetrieval::load(&fx.files, &fx.device).unwrap_err();
    assert!(err.to_string().contains("text_encoder"), "{err}");

    let model = caption_model(&fx);
    let px = fx.photo_batch();
    let wrong_size = px.narrow(3, 0, 16).unwrap();
    assert!(model.vision(&wrong_size).is_err());
    let image = model.vision(&px).unwrap();
    let max_pos = model.config().text_config.max_position_embeddings;
    let too_long = Tensor::zeros((3, max_pos + 1), DType::U32, &fx.device).unwrap();
    assert!(model.decoder_logits(&image, &too_long, None).is_err());
    // Decoding past the position table ends in an error, not a panic.
    let mut cache = model.new_cache(&image).unwrap();
    let bos = Tensor::zeros((3, max_pos), DType::U32, &fx.device).unwrap();
    model.step(&bos, &mut cache).unwrap();
    let one = Tensor::zeros((3, 1), DType::U32, &fx.device).unwrap();
    assert!(model.step(&one, &mut cache).is_err());

    let fx = Fixture::open("blip_vqa");
    let vqa = BlipForQuestionAnswering::load(&fx.files, &fx.device).unwrap();
    let q = fx.get("question_input_ids"); // [2, t]
    let mask = fx.get("question_attention_mask");
    // Three images for two questions cannot be paired.
    let err = vqa.generate(&fx.photo_batch(), &q, &mask, &gen_config(&fx, 1));
    assert!(err.is_err());
}

/// The settings against loops that a generation_config.json may recommend
/// (`no_repeat_ngram_size`, `repetition_penalty`, `exponential_decay_length_penalty`),
/// greedy and beam, recorded by `tools/fixtures/make_decoding_fixtures.py`.
#[test]
fn caption_ids_match_reference_under_settings_against_loops() {
    let fx = Fixture::open("blip_caption");
    let model = caption_model(&fx);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.files.dir.join("decoding.json")).unwrap())
            .unwrap();
    let mut differ = 0;
    for case in doc["cases"].as_array().unwrap() {
        let decay = case["exponential_decay_length_penalty"]
            .as_array()
            .map(|a| {
                (
                    a[0].as_u64().unwrap() as usize,
                    a[1].as_f64().unwrap() as f32,
                )
            });
        let gen = GenerationConfig {
            max_new_tokens: doc["max_new_tokens"].as_u64().unwrap() as usize,
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            no_repeat_ngram_size: case["no_repeat_ngram_size"].as_u64().unwrap() as usize,
            repetition_penalty: case["repetition_penalty"].as_f64().unwrap() as f32,
            length_decay: decay,
            eos_token_ids: vec![doc["eos_token_id"].as_u64().unwrap() as u32],
            pad_token_id: doc["pad_token_id"].as_u64().unwrap() as u32,
            ..GenerationConfig::default()
        };
        differ += case["differs_from_plain"].as_u64().unwrap();
        for (photo, want) in case["generated"].as_object().unwrap() {
            let px = fx.get(&format!("pixel_values.{photo}"));
            let got = model.generate(&px, None, &gen).unwrap();
            let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(got[0], want, "{} caption of {photo}", case["name"]);
        }
    }
    // The settings must have changed what the plain search writes, or nothing is tested.
    assert!(
        differ >= 5,
        "only {differ} captions differ from the plain search"
    );
}
