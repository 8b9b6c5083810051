//! Continuous batching of chat replies: conversations that join a running batch (with
//! prompts of different lengths, their own seeds and limits) get exactly the replies
//! they get alone, on the tiny LLaVA and BLIP-2 (OPT) fixtures.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use glimpse_generate::GenerationConfig;
use glimpse_models::capability::ChatTurn;
use glimpse_models::pipeline::{ChatRequest, ConversationRows, Pipeline, Reply};
use image::RgbImage;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn pipeline(rel: &str) -> Pipeline {
    Pipeline::load(root().join(rel).to_str().unwrap(), &Device::Cpu).unwrap()
}

fn image(name: &str) -> RgbImage {
    let path = root().join("examples/synth").join(format!("{name}.png"));
    image::open(&path).unwrap().to_rgb8()
}

const NAMES: [&str; 5] = [
    "blue-circle",
    "pink-diamond-and-cyan-star",
    "cyan-heart",
    "purple-diamond",
    "pink-triangle",
];

/// Request `i` arrives at admission call `arrive[i]`.
struct Arrivals {
    requests: Vec<(RgbImage, ChatRequest)>,
    arrive: Vec<usize>,
    calls: usize,
    running: Vec<usize>,
    streamed: BTreeMap<u64, Vec<u32>>,
    done: BTreeMap<u64, ChatTurn>,
}

impl Arrivals {
    fn new(requests: Vec<(RgbImage, ChatRequest)>, arrive: Vec<usize>) -> Self {
        Self {
            requests,
            arrive,
            calls: 0,
            running: Vec::new(),
            streamed: BTreeMap::new(),
            done: BTreeMap::new(),
        }
    }
}

impl ConversationRows for Arrivals {
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage, ChatRequest)>> {
        self.running.push(running);
        let now: Vec<_> = (0..self.requests.len())
            .filter(|&i| self.arrive[i] == self.calls)
            .map(|i| {
                (
                    i as u64,
                    self.requests[i].0.clone(),
                    self.requests[i].1.clone(),
                )
            })
            .collect();
        self.calls += 1;
        (!now.is_empty()).then_some(now)
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.streamed.entry(tag).or_default().push(token);
        true
    }

    fn finished(&mut self, tag: u64, reply: glimpse_models::Result<ChatTurn>) {
        self.done.insert(tag, reply.unwrap());
    }
}

/// Five conversations: replayed histories and systems of different lengths; with
/// `sample`, each its own seed; the fourth asks for fewer tokens.
fn requests(sample: bool) -> Vec<(RgbImage, ChatRequest)> {
    let texts = [
        (None, vec![], "What is in the picture?"),
        (Some("Be brief."), vec![], "What colour is the shape?"),
        (
            None,
            vec![("Describe it.".to_string(), "a shape".to_string())],
            "And its colour?",
        ),
        (Some("Answer in one word."), vec![], "Shape?"),
        (
            Some("You look at pictures."),
            vec![
                ("Hi".to_string(), "hello".to_string()),
                ("What do you see?".to_string(), "a picture".to_string()),
            ],
            "Which colours are there?",
        ),
    ];
    texts
        .into_iter()
        .enumerate()
        .map(|(i, (system, history, user))| {
            let request = ChatRequest {
                system: system.map(str::to_string),
                history,
                user: user.to_string(),
                seed: sample.then_some(100 + i as u64),
                max_new_tokens: (i == 3).then_some(3),
            };
            (image(NAMES[i]), request)
        })
        .collect()
}

/// `request`'s `gen` alone: its own seed and limit.
fn own(gen: &GenerationConfig, request: &ChatRequest) -> GenerationConfig {
    GenerationConfig {
        seed: request.seed.unwrap_or(gen.seed),
        max_new_tokens: request.max_new_tokens.unwrap_or(gen.max_new_tokens),
        ..gen.clone()
    }
}

fn gen(p: &Pipeline, sample: bool) -> GenerationConfig {
    p.generation_config(GenerationConfig {
        max_new_tokens: 12,
        do_sample: sample,
        temperature: 0.9,
        top_k: 0,
        ..GenerationConfig::default()
    })
}

fn check_shared(rows: &Arrivals) {
    assert_eq!(rows.done.len(), rows.requests.len());
    assert!(
        rows.done.values().any(|t| t.token_ids.len() > 3),
        "replies long enough to tell apart"
    );
    assert!(
        rows.running.iter().any(|&r| r >= 3),
        "rows shared the batch: {:?}",
        rows.running
    );
}

#[test]
fn llava_conversations_joining_a_running_batch_get_their_replies_alone() {
    let llava = pipeline("tools/fixtures/llava");
    for sample in [false, true] {
        let gen = gen(&llava, sample);
        let mut rows = Arrivals::new(requests(sample), vec![0, 0, 1, 3, 3]);
        assert!(llava.reply_joining(Reply::Chat, &gen, &mut rows).unwrap());
        check_shared(&rows);
        for (i, (img, request)) in rows.requests.iter().enumerate() {
            let pixels = llava.pixel_values(std::slice::from_ref(img)).unwrap();
            let mut chat = llava
                .start_chat(&pixels, request.system.as_deref())
                .unwrap();
            for (u, a) in &request.history {
                chat.push_turn(u, a).unwrap();
            }
            let alone = chat.send(&request.user, &own(&gen, request)).unwrap();
            let got = &rows.done[&(i as u64)];
            assert_eq!(
                got.token_ids, alone.token_ids,
                "request {i}, sample {sample}"
            );
            assert_eq!(got.answer, alone.answer, "request {i}");
            assert_eq!(got.input_ids, alone.input_ids, "request {i}");
            assert_eq!(got.prompt, alone.prompt, "request {i}");
            assert_eq!(rows.streamed[&(i as u64)], alone.token_ids, "request {i}");
        }
        assert!(rows.done[&3].token_ids.len() <= 3);
    }
}

#[test]
fn llava_and_blip2_answers_joining_a_running_batch_equal_ask() {
    for dir in ["tools/fixtures/llava", "tools/fixtures/blip2_opt"] {
        let p = pipeline(dir);
        for sample in [false, true] {
            let gen = gen(&p, sample);
            let asks: Vec<(RgbImage, ChatRequest)> = requests(sample)
                .into_iter()
                .map(|(img, r)| {
                    let request = ChatRequest {
                        system: None,
                        history: Vec::new(),
                        ..r
                    };
                    (img, request)
                })
                .collect();
            let mut rows = Arrivals::new(asks, vec![0, 1, 1, 2, 4]);
            assert!(p.reply_joining(Reply::Answer, &gen, &mut rows).unwrap());
            check_shared(&rows);
            for (i, (img, request)) in rows.requests.iter().enumerate() {
                let alone = p.ask(img, &request.user, &own(&gen, request)).unwrap();
                let got = &rows.done[&(i as u64)];
                assert_eq!(
                    got.token_ids, alone.token_ids,
                    "{dir} request {i}, sample {sample}"
                );
                assert_eq!(got.answer, alone.text, "{dir} request {i}");
                assert_eq!(rows.streamed[&(i as u64)], alone.token_ids);
            }
        }
    }
}

#[test]
fn a_model_without_chat_refuses_before_taking_rows() {
    let p = pipeline("models/blip-synth/caption");
    let mut rows = Arrivals::new(requests(false), vec![0; 5]);
    let err = p
        .reply_joining(Reply::Chat, &GenerationConfig::default(), &mut rows)
        .unwrap_err();
    assert!(err.to_string().contains("chat"), "{err}");
    assert_eq!(rows.calls, 0);
}

/// The decoding engine's gain, without a server: 32 questions decoded as one batch
/// against one at a time on the tiny BLIP-2 (30 tokens each). A measurement, run with
/// `cargo test -p glimpse-models --test chat_joining -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_32_answers_batched_against_one_at_a_time() {
    for dir in ["tools/fixtures/blip2_opt", "tools/fixtures/llava"] {
        let p = pipeline(dir);
        let gen = p.generation_config(GenerationConfig {
            max_new_tokens: 30,
            ..GenerationConfig::default()
        });
        let asks: Vec<(RgbImage, ChatRequest)> = (0..32)
            .map(|i| {
                let request = ChatRequest {
                    user: "what colour is the circle?".into(),
                    ..ChatRequest::default()
                };
                (image(NAMES[i % NAMES.len()]), request)
            })
            .collect();
        for round in 0..3 {
            let started = std::time::Instant::now();
            let alone: Vec<_> = asks
                .iter()
                .map(|(img, r)| p.ask(img, &r.user, &gen).unwrap())
                .collect();
            let one = started.elapsed();
            let mut rows = Arrivals::new(asks.clone(), vec![0; asks.len()]);
            let started = std::time::Instant::now();
            assert!(p.reply_joining(Reply::Answer, &gen, &mut rows).unwrap());
            let batched = started.elapsed();
            for (i, a) in alone.iter().enumerate() {
                assert_eq!(rows.done[&(i as u64)].token_ids, a.token_ids);
            }
            let tokens: usize = alone.iter().map(|a| a.token_ids.len()).sum();
            println!(
                "{dir} round {round}: {tokens} tokens; one at a time {:.1} ms, batched {:.1} ms ({:.1}x)",
                one.as_secs_f64() * 1e3,
                batched.as_secs_f64() * 1e3,
                one.as_secs_f64() / batched.as_secs_f64()
            );
        }
    }
}

/// A reply that generates the image token's id goes on (it is embedded as a token, as
/// the reference does), instead of failing the step of every row of its batch.
#[test]
fn a_generated_image_token_is_embedded_as_a_token() {
    use glimpse_generate::Decoder;
    use glimpse_models::checkpoint::ModelFiles;
    use glimpse_models::llava::LlavaForConditionalGeneration;

    let dir = root().join("tools/fixtures/llava");
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let m = LlavaForConditionalGeneration::load(&files, &Device::Cpu).unwrap();
    let image_id = m.config().image_token_index;
    let mut cache = m.new_cache(None);
    let prompt = candle_core::Tensor::new(&[[1u32, 5, 9], [1, 7, 3]], &Device::Cpu).unwrap();
    m.step(&prompt, &mut cache).unwrap();
    let next = candle_core::Tensor::new(&[[image_id], [11]], &Device::Cpu).unwrap();
    let logits = m.step(&next, &mut cache).unwrap();
    assert_eq!(logits.dims()[0], 2);
    // A prompt's image token without image features is still refused.
    let mut fresh = m.new_cache(None);
    let with_image = candle_core::Tensor::new(&[[1u32, image_id]], &Device::Cpu).unwrap();
    let err = m.step(&with_image, &mut fresh).unwrap_err();
    assert!(err.to_string().contains("image"), "{err}");
}
