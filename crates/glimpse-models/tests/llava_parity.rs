//! LLaVA against the reference (transformers 5.24 on PyTorch): the tiny random-weight
//! checkpoints in `tools/fixtures/llava` (layer -2, "default") and
//! `tools/fixtures/llava_full` (layers [-2, -1], "full"), written by
//! `tools/fixtures/make_fixtures_llm.py`. Image features and logits must agree to 1e-4
//! (1e-3 on a GPU, `GLIMPSE_TEST_DEVICE=cuda`); prompt ids and greedy ids exactly, the multi-turn case through the cache-reusing
//! `ChatSession`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use glimpse_generate::GenerationConfig;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::llava::{
    ChatMessage, ChatSession, ChatTemplate, LlavaForConditionalGeneration, LlavaProcessor,
};
use serde_json::Value;

mod common;

use common::{tol, Fixture, TOL};

/// Loaders for this family; the shared fixture reading is in `common`.
impl Fixture {
    fn model(&self) -> LlavaForConditionalGeneration {
        LlavaForConditionalGeneration::load(&self.files, &self.device).unwrap()
    }

    fn processor(&self, model: &LlavaForConditionalGeneration) -> LlavaProcessor {
        LlavaProcessor::load(&self.files, model.config()).unwrap()
    }
}

fn greedy(model: &LlavaForConditionalGeneration) -> GenerationConfig {
    model.generation_config(&GenerationConfig::greedy(10, vec![]))
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn row(t: &Tensor) -> Vec<u32> {
    t.squeeze(0).unwrap().to_vec1().unwrap()
}

/// Largest absolute difference at positions where `mask` (`[b, t]`) is 1.
fn max_diff(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let mut d = (a - b).unwrap().abs().unwrap();
    if let Some(m) = mask {
        let m = m
            .to_dtype(DType::F32)
            .unwrap()
            .unsqueeze(D::Minus1)
            .unwrap();
        d = d.broadcast_mul(&m).unwrap();
    }
    d.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn check_features_and_logits(name: &str) {
    let fx = Fixture::open(name);
    let model = fx.model();
    let px = fx.pixels(&fx.photos()[0]);
    let feats = model.image_features(&px).unwrap();
    let diff = max_diff(&feats, &fx.get("image_features"), None);
    assert!(diff <= tol(TOL), "{name}: image_features differ by {diff}");

    let mask = fx.get("attention_mask");
    let logits = model
        .logits(Some(&px), &fx.get("input_ids"), Some(&mask))
        .unwrap();
    let diff = max_diff(&logits, &fx.get("logits"), Some(&mask));
    assert!(diff <= tol(TOL), "{name}: logits differ by {diff}");
}

#[test]
fn image_features_and_logits_match_layer_minus_2_default() {
    check_features_and_logits("llava");
}

#[test]
fn image_features_and_logits_match_layer_list_full() {
    check_features_and_logits("llava_full");
}

fn check_prompt_and_greedy(name: &str) {
    let fx = Fixture::open(name);
    let model = fx.model();
    let proc = fx.processor(&model);
    let single = &fx.json["single_turn"];
    let conversation: Vec<ChatMessage> =
        serde_json::from_value(single["conversation"].clone()).unwrap();
    let (prompt, input_ids) = proc.prompt(&conversation, true).unwrap();
    assert_eq!(
        prompt,
        single["prompt"].as_str().unwrap(),
        "{name}: prompt text"
    );
    assert_eq!(input_ids, ids(&single["input_ids"]), "{name}: prompt ids");
    assert_eq!(input_ids, row(&fx.get("input_ids")), "{name}: prompt ids");

    let prompt = Tensor::new(input_ids.as_slice(), &fx.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let expected: Vec<Vec<u32>> = serde_json::from_value(single["generated"].clone()).unwrap();
    for (photo, want) in fx.photos().iter().zip(&expected) {
        let got = model
            .generate(&fx.pixels(photo), &prompt, &greedy(&model))
            .unwrap();
        assert_eq!(&got[0], want, "{name}: greedy ids for {photo}");
    }
}

#[test]
fn prompt_ids_and_greedy_match_layer_minus_2_default() {
    check_prompt_and_greedy("llava");
}

#[test]
fn prompt_ids_and_greedy_match_layer_list_full() {
    check_prompt_and_greedy("llava_full");
}

#[test]
fn multi_turn_chat_reuses_the_cache_and_matches_the_reference() {
    let fx = Fixture::open("llava");
    let model = fx.model();
    let proc = fx.processor(&model);
    let mt = &fx.json["multi_turn"];
    let px = fx.pixels(mt["image"].as_str().unwrap());
    let question = |turn: &str, i: usize| {
        let conv: Vec<ChatMessage> =
            serde_json::from_value(mt[turn]["conversation"].clone()).unwrap();
        match &conv[i].content.last().unwrap() {
            glimpse_models::llava::Content::Text { text } => text.clone(),
            other => panic!("unexpected content {other:?}"),
        }
    };

    let mut chat = ChatSession::new(&model, &proc, &px).unwrap();
    let mut streamed = Vec::new();
    let gen = greedy(&model);
    let t1 = chat
        .send_stream(&question("turn1", 0), &gen, |id| {
            streamed.push(id);
            true
        })
        .unwrap();
    assert_eq!(t1.input_ids, ids(&mt["turn1"]["input_ids"]));
    assert_eq!(t1.token_ids, ids(&mt["turn1"]["generated"]));
    assert_eq!(streamed, t1.token_ids, "streamed tokens");
    assert_eq!(t1.answer, mt["turn1"]["answer"].as_str().unwrap());
    assert_eq!(t1.reused, 0);

    let t2 = chat.send(&question("turn2", 2), &gen).unwrap();
    assert_eq!(t2.prompt, mt["turn2"]["prompt"].as_str().unwrap());
    assert_eq!(t2.input_ids, row(&fx.get("turn2_input_ids")));
    // The cache held the first prompt and all but the last generated token.
    assert_eq!(t2.reused, t1.input_ids.len() + t1.token_ids.len() - 1);
    assert_eq!(t2.token_ids, ids(&mt["turn2"]["generated"]), "turn 2 ids");
    assert_eq!(chat.messages().len(), 4);
}

#[test]
fn chat_starts_over_when_the_cached_ids_are_not_a_prefix() {
    let fx = Fixture::open("llava");
    let model = fx.model();
    let mut proc = fx.processor(&model);
    // A template that shows only the newest message: turn 2 shares no prefix with turn 1.
    proc.template = ChatTemplate::new(
        "USER: {{ messages[-1].content[-1].text }} ASSISTANT:",
        "last-only",
    );
    let px = fx.pixels("cat");
    let gen = greedy(&model);
    let mut chat = ChatSession::new(&model, &proc, &px).unwrap();
    chat.send("What is in the picture?", &gen).unwrap();
    let t2 = chat.send("What color is the sky?", &gen).unwrap();
    assert_eq!(t2.reused, 0);
    let mut fresh = ChatSession::new(&model, &proc, &px).unwrap();
    let again = fresh.send("What color is the sky?", &gen).unwrap();
    assert_eq!(t2.token_ids, again.token_ids);
    assert!(
        chat.send("  ", &gen).is_err(),
        "an empty message is an error"
    );
}

#[test]
fn every_checkpoint_layout_loads_to_the_same_model() {
    let fx = Fixture::open("llava");
    let base = fx.model();
    let px = fx.pixels("cat");
    let input_ids = fx.get("input_ids");
    let want = base.logits(Some(&px), &input_ids, None).unwrap();
    let stored =
        candle_core::safetensors::load(fx.dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let hub = |k: &str| k.replacen("vision_tower.", "vision_tower.vision_model.", 1);
    let in_memory = |k: &str| {
        if let Some(rest) = k.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = k.strip_prefix("language_model.") {
            rest.to_string()
        } else if let Some(rest) = k.strip_prefix("vision_tower.") {
            format!("model.vision_tower.vision_model.{rest}")
        } else {
            format!("model.{k}")
        }
    };
    type Rename<'a> = &'a dyn Fn(&str) -> String;
    let renames: [(&str, Rename); 2] = [("hub", &hub), ("in-memory", &in_memory)];
    for (what, rename) in renames {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(fx.dir.join("config.json"), tmp.path().join("config.json")).unwrap();
        let renamed: HashMap<String, Tensor> =
            stored.iter().map(|(k, v)| (rename(k), v.clone())).collect();
        candle_core::safetensors::save(&renamed, tmp.path().join("model.safetensors")).unwrap();
        let files = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
        let model = LlavaForConditionalGeneration::load(&files, &fx.device)
            .unwrap_or_else(|e| panic!("{what} layout: {e}"));
        let got = model.logits(Some(&px), &input_ids, None).unwrap();
        assert_eq!(max_diff(&got, &want, None), 0.0, "{what} layout");
    }
}

#[test]
fn image_token_count_must_match_the_features() {
    let fx = Fixture::open("llava");
    let model = fx.model();
    let px = fx.pixels("cat");
    let mut ids = row(&fx.get("input_ids"));
    let first = ids.iter().position(|&i| i == 480).unwrap();
    ids.remove(first);
    let ids = Tensor::new(ids.as_slice(), &fx.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let err = model.logits(Some(&px), &ids, None).unwrap_err().to_string();
    assert!(
        err.contains("15 image token") && err.contains("16"),
        "{err}"
    );
}

#[test]
fn config_reads_layers_as_int_or_list_with_reference_defaults() {
    use glimpse_models::llava::{LlavaConfig, VisionFeatureLayer};
    let one: VisionFeatureLayer = serde_json::from_str("-2").unwrap();
    let many: VisionFeatureLayer = serde_json::from_str("[-2, -1]").unwrap();
    assert_eq!(one.resolve(2).unwrap(), vec![1]);
    assert_eq!(many.resolve(2).unwrap(), vec![1, 2]);
    assert_eq!(VisionFeatureLayer::One(0).resolve(2).unwrap(), vec![0]);
    assert!(VisionFeatureLayer::One(-4).resolve(2).is_err());
    assert!(VisionFeatureLayer::One(3).resolve(2).is_err());
    assert!(VisionFeatureLayer::Many(vec![]).resolve(2).is_err());

    let cfg: LlavaConfig = serde_json::from_str(r#"{"image_token_id": 7}"#).unwrap();
    assert_eq!(cfg.image_token_index, 7);
    assert_eq!(cfg.vision_config.image_size, 336);
    assert_eq!(cfg.image_tokens_per_image(), 576);
    assert_eq!(cfg.vision_feature_layer, VisionFeatureLayer::One(-2));
    let bad = serde_json::from_str::<LlavaConfig>(r#"{"vision_feature_select_strategy": "cls"}"#);
    assert!(bad.is_err());
}

#[test]
fn the_default_template_writes_the_llava_15_format() {
    let t = ChatTemplate::llava_default();
    let turn1 = vec![ChatMessage::user("What is it?", true)];
    assert_eq!(
        t.render(&turn1, true).unwrap(),
        "USER: <image>\nWhat is it? ASSISTANT:"
    );
    let mut turn2 = turn1;
    turn2.push(ChatMessage::assistant("A cat."));
    turn2.push(ChatMessage::user("Colour?", false));
    assert_eq!(
        t.render(&turn2, true).unwrap(),
        "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
    );
    // The fixture's own template renders the same conversation identically.
    let fx = Fixture::open("llava");
    let stored = ChatTemplate::from_dir(&fx.dir).unwrap().unwrap();
    assert!(stored.origin.ends_with("chat_template.jinja"));
    assert_eq!(stored.special_tokens["bos_token"], "<s>");
    assert_eq!(
        stored.render(&turn2, true).unwrap(),
        t.render(&turn2, true).unwrap()
    );
}

#[test]
fn template_errors_name_the_template_and_python_methods_work() {
    let t = ChatTemplate::new("{{ raise_exception('only one image') }}", "x.jinja");
    let err = t.render(&[], false).unwrap_err().to_string();
    assert!(
        err.contains("x.jinja") && err.contains("only one image"),
        "{err}"
    );
    let t = ChatTemplate::new("{% for %}", "y.jinja");
    assert!(t
        .render(&[], false)
        .unwrap_err()
        .to_string()
        .contains("y.jinja"));
    let t = ChatTemplate::new(
        "{{ messages[0].content[0].text.strip() }}|{{ messages[0].role | tojson }}",
        "z",
    );
    let m = vec![ChatMessage::user("  hi <b> ", false)];
    assert_eq!(t.render(&m, false).unwrap(), "hi <b>|\"user\"");
}
