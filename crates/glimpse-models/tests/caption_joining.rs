//! Continuous batching of captions: images that join a running batch (and captions
//! that leave it early) get exactly the captions they get alone, on the bundled BLIP.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use glimpse_generate::GenerationConfig;
use glimpse_models::capability::Generated;
use glimpse_models::pipeline::{ImageRows, Pipeline};
use image::RgbImage;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn image(name: &str) -> RgbImage {
    let path = root().join("examples/synth").join(format!("{name}.png"));
    image::open(&path).unwrap().to_rgb8()
}

/// Image `i` arrives at admission call `arrive[i]`.
struct Arrivals {
    images: Vec<RgbImage>,
    arrive: Vec<usize>,
    calls: usize,
    running: Vec<usize>,
    streamed: BTreeMap<u64, Vec<u32>>,
    done: BTreeMap<u64, Generated>,
}

impl ImageRows for Arrivals {
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage)>> {
        self.running.push(running);
        let now: Vec<(u64, RgbImage)> = (0..self.images.len())
            .filter(|&i| self.arrive[i] == self.calls)
            .map(|i| (i as u64, self.images[i].clone()))
            .collect();
        self.calls += 1;
        (!now.is_empty()).then_some(now)
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.streamed.entry(tag).or_default().push(token);
        true
    }

    fn finished(&mut self, tag: u64, caption: glimpse_models::Result<Generated>) {
        self.done.insert(tag, caption.unwrap());
    }
}

#[test]
fn images_joining_a_running_caption_batch_get_their_captions_alone() {
    let dir = root().join("models/blip-synth/caption");
    let pipeline = Pipeline::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let gen = pipeline.generation_config(GenerationConfig {
        max_new_tokens: 20,
        ..GenerationConfig::default()
    });
    let names = [
        "blue-circle",
        "pink-diamond-and-cyan-star",
        "cyan-heart",
        "purple-diamond",
        "pink-triangle",
    ];
    let images: Vec<RgbImage> = names.iter().map(|n| image(n)).collect();
    for prompt in [None, Some("a picture of")] {
        let mut rows = Arrivals {
            images: images.clone(),
            // Two start together, one joins after a step, two more after three.
            arrive: vec![0, 0, 1, 3, 3],
            calls: 0,
            running: Vec::new(),
            streamed: BTreeMap::new(),
            done: BTreeMap::new(),
        };
        assert!(pipeline.caption_joining(prompt, &gen, &mut rows).unwrap());
        assert_eq!(rows.done.len(), images.len());
        for (i, img) in images.iter().enumerate() {
            let alone = pipeline
                .caption(std::slice::from_ref(img), prompt, &gen)
                .unwrap()
                .remove(0);
            let got = &rows.done[&(i as u64)];
            assert_eq!(got, &alone, "{} with prompt {prompt:?}", names[i]);
            assert_eq!(rows.streamed[&(i as u64)], alone.token_ids);
        }
        assert!(
            rows.running.iter().any(|&r| r >= 3),
            "rows shared the batch: {:?}",
            rows.running
        );
    }
}

#[test]
fn a_model_without_captions_refuses_before_taking_rows() {
    let dir = root().join("models/blip-synth/vqa");
    let pipeline = Pipeline::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let mut rows = Arrivals {
        images: vec![image("blue-circle")],
        arrive: vec![0],
        calls: 0,
        running: Vec::new(),
        streamed: BTreeMap::new(),
        done: BTreeMap::new(),
    };
    let err = pipeline
        .caption_joining(None, &GenerationConfig::default(), &mut rows)
        .unwrap_err();
    assert!(err.to_string().contains("caption"), "{err}");
    assert_eq!(rows.calls, 0);
}
