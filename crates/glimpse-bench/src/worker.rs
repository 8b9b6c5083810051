//! Glimpse's side of one workload, run in a child process of its own (`glimpse bench
//! --worker W`): load the model, build the inputs, run the warm-up and timed calls, and
//! return the [`SideResult`] the child prints.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use glimpse_generate::GenerationConfig;
use glimpse_models::blip::BlipForConditionalGeneration;
use glimpse_models::blip2::Blip2ForConditionalGeneration;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipModel;
use glimpse_models::llava::LlavaForConditionalGeneration;
use glimpse_nn::linears::Linears;
use glimpse_nn::quant::Quant;

use crate::error::{Error, Result};
use crate::protocol::{has_checkpoint, SideResult};
use crate::rng::pixels;
use crate::stats::{median, token_times};
use crate::workload::{
    StreamModel, Task, Workload, BLIP2_TEXT_IDS, CAPTION_TOKENS, CLIP_TEXT_BATCH, CLIP_TEXT_LEN,
    LLAVA_IDS_AFTER, LLAVA_IDS_BEFORE, MATMUL_COUNT, MATMUL_N,
};
use crate::Settings;
use glimpse_data::rng::SplitMix64;

/// Times `w` on Glimpse's side under `settings` (its checkpoint under
/// `settings.models`), the language model quantised with `quantize`; progress lines go
/// to `log`.
pub fn run_worker(
    w: &Workload,
    settings: &Settings,
    quantize: Option<Quant>,
    log: &mut dyn FnMut(&str),
) -> Result<SideResult> {
    let Settings {
        reps,
        warmup,
        new_tokens,
        ref models,
    } = *settings;
    let dir = w.model_dir.map(|d| models.join(d));
    if let Some(dir) = dir.as_deref().filter(|d| !has_checkpoint(d)) {
        return Err(Error::MissingCheckpoint(dir.to_path_buf()));
    }
    let start = Instant::now();
    let mut step = build_step(w, dir.as_deref(), new_tokens, quantize, log)?;
    let load_s = start.elapsed().as_secs_f64();

    let mut reps_s = Vec::with_capacity(reps);
    let (mut ttft_reps_s, mut per_token_reps_s) = (Vec::new(), Vec::new());
    let mut items = 0;
    for i in 0..warmup + reps {
        let t = Instant::now();
        let out = step()?;
        let dt = t.elapsed().as_secs_f64();
        items = out.items;
        let what = if i < warmup { "warmup" } else { "rep" };
        match token_times(t, &out.token_stamps) {
            Some((ttft, per_token)) => {
                log(&format!(
                    "  glimpse {}: {what} {dt:.3} s, first token {ttft:.3} s, {:.1} ms/token",
                    w.name,
                    per_token * 1e3
                ));
                if i >= warmup {
                    ttft_reps_s.push(ttft);
                    per_token_reps_s.push(per_token);
                }
            }
            None => log(&format!("  glimpse {}: {what} {dt:.3} s", w.name)),
        }
        if i >= warmup {
            reps_s.push(dt);
        }
    }
    let median_of = |xs: &[f64]| (!xs.is_empty()).then(|| median(xs));
    Ok(SideResult {
        side: "glimpse".into(),
        workload: w.name.into(),
        median_s: median(&reps_s),
        reps_s,
        warmup,
        items_per_rep: items,
        load_s,
        peak_rss_bytes: proc_status_bytes("VmHWM"),
        rss_end_bytes: proc_status_bytes("VmRSS"),
        threads: candle_core::utils::get_num_threads(),
        ttft_median_s: median_of(&ttft_reps_s),
        ttft_reps_s,
        per_token_median_s: median_of(&per_token_reps_s),
        per_token_reps_s,
        attn_implementation: None,
        quantize: quantize.map(|q| q.name().to_string()),
        versions: Some(serde_json::json!({
            "glimpse": env!("CARGO_PKG_VERSION"),
            "build": crate::BUILD,
        })),
    })
}

/// What one timed call produced.
struct Measured {
    /// Images, texts or new tokens.
    items: usize,
    /// Streaming workloads: when each new token was chosen (empty otherwise).
    token_stamps: Vec<Instant>,
}

impl From<usize> for Measured {
    fn from(items: usize) -> Self {
        Self {
            items,
            token_stamps: Vec::new(),
        }
    }
}

/// One timed call.
type Step = Box<dyn FnMut() -> Result<Measured>>;

/// Loads the workload's model from `dir` (quantising its language model when asked) and
/// builds its inputs; only the returned closure is timed. `matmul` needs no `dir`.
fn build_step(
    w: &Workload,
    dir: Option<&Path>,
    new_tokens: usize,
    quantize: Option<Quant>,
    log: &mut dyn FnMut(&str),
) -> Result<Step> {
    let device = Device::Cpu;
    let mut rng = SplitMix64::new(0x5EED);
    if let Task::Matmul = w.task {
        // Inputs made once; the call is the kernel every Glimpse model's layers use: the
        // f32 product, or for `matmul-i8` an 8-bit linear layer (the weight rounded once,
        // as a model's at load time; each call rounds `a`'s rows).
        let a = pixels(&mut rng, &[MATMUL_N, MATMUL_N], &device)?;
        let b = pixels(&mut rng, &[MATMUL_N, MATMUL_N], &device)?;
        let product: Box<dyn Fn() -> Result<Tensor>> = if w.int8 {
            let b = glimpse_nn::kernels::Int8Weight::new(&b)?.ok_or_else(|| {
                Error::InvalidConfig(format!("{}: this CPU has no 8-bit kernel (AVX2)", w.name))
            })?;
            Box::new(move || {
                glimpse_nn::kernels::linear_int8(&a, &b, None, None, None)?
                    .ok_or_else(|| Error::Unexpected("the 8-bit kernel declined".into()))
            })
        } else {
            Box::new(move || Ok(a.matmul(&b)?))
        };
        return Ok(Box::new(move || {
            for _ in 0..MATMUL_COUNT {
                let c = product()?; // [n, n]
                if c.dims() != [MATMUL_N, MATMUL_N] {
                    return Err(Error::Unexpected(format!("matmul produced {:?}", c.dims())));
                }
            }
            Ok(1.into())
        }));
    }
    let dir =
        dir.ok_or_else(|| Error::InvalidConfig(format!("{} needs a model directory", w.name)))?;
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .map_err(Error::io(format!("reading {}", config_path.display())))?,
    )
    .map_err(Error::json(format!("parsing {}", config_path.display())))?;
    let field = |section: &str, key: &str| -> Result<usize> {
        config[section][key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::ConfigField {
                dir: dir.to_path_buf(),
                field: format!("{section}.{key}"),
            })
    };
    let dir_str = dir
        .to_str()
        .ok_or_else(|| Error::InvalidConfig("model directory is not UTF-8".into()))?;
    let files = ModelFiles::resolve(dir_str)?;

    match w.task {
        Task::Matmul => unreachable!("built above, without a model"),
        Task::ClipImage { batch } => {
            let model = int8(ClipModel::load(&files, &device)?, w, log)?;
            let size = field("vision_config", "image_size")?;
            let pixels = pixels(&mut rng, &[batch, 3, size, size], &device)?;
            Ok(Box::new(move || {
                let features = model.get_image_features(&pixels)?; // [batch, proj]
                Ok(features.dim(0)?.into())
            }))
        }
        Task::ClipText => {
            let model = int8(ClipModel::load(&files, &device)?, w, log)?;
            let eos = field("text_config", "eos_token_id")? as u32;
            // Ids below bos/eos (49406, 49407), eos last: pooling picks the final position.
            let mut ids: Vec<u32> = (0..CLIP_TEXT_BATCH * CLIP_TEXT_LEN)
                .map(|_| (rng.next_u64() % 49406) as u32)
                .collect();
            for row in ids.chunks_mut(CLIP_TEXT_LEN) {
                row[CLIP_TEXT_LEN - 1] = eos;
            }
            let ids = Tensor::from_vec(ids, (CLIP_TEXT_BATCH, CLIP_TEXT_LEN), &device)?;
            let mask = Tensor::ones((CLIP_TEXT_BATCH, CLIP_TEXT_LEN), DType::U32, &device)?;
            Ok(Box::new(move || {
                let features = model.get_text_features(&ids, &mask)?; // [32, proj]
                Ok(features.dim(0)?.into())
            }))
        }
        Task::Caption { beams } => {
            let model = int8(BlipForConditionalGeneration::load(&files, &device)?, w, log)?;
            let size = field("vision_config", "image_size")?;
            let pixels = pixels(&mut rng, &[1, 3, size, size], &device)?;
            // Exactly CAPTION_TOKENS new tokens, as the reference is told to produce;
            // end and pad ids from the model, as the reference's `generate` sets them.
            let gen = model.generation_config(&GenerationConfig {
                max_new_tokens: CAPTION_TOKENS,
                min_new_tokens: CAPTION_TOKENS,
                num_beams: beams,
                do_sample: false,
                ..GenerationConfig::default()
            });
            gen.validate()?;
            Ok(Box::new(move || {
                let ids = model.generate(&pixels, None, &gen)?; // one Vec<u32> per image
                let n = ids.first().map_or(0, Vec::len);
                if n != CAPTION_TOKENS {
                    return Err(Error::Unexpected(format!(
                        "generated {n} tokens, expected {CAPTION_TOKENS}"
                    )));
                }
                Ok(n.into())
            }))
        }
        Task::Stream(kind) => {
            let size = field("vision_config", "image_size")?;
            let pixels = pixels(&mut rng, &[1, 3, size, size], &device)?;
            // Exactly `new_tokens` greedy tokens, as the reference is told to produce.
            let forced = GenerationConfig {
                max_new_tokens: new_tokens,
                min_new_tokens: new_tokens,
                num_beams: 1,
                do_sample: false,
                ..GenerationConfig::default()
            };
            match kind {
                StreamModel::Blip2Opt => {
                    let mut model = Blip2ForConditionalGeneration::load(&files, &device)?;
                    if let Some(q) = quantize {
                        let report = model.quantize_language_model(q)?;
                        log(&format!("  glimpse {}: {report}", w.name));
                    }
                    // The processor's ids: 32 query placeholders, then the text ids.
                    let ids = model.processor_ids(BLIP2_TEXT_IDS);
                    let ids = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?; // [1, t]
                    let gen = model.generation_config(&forced);
                    gen.validate()?;
                    Ok(Box::new(move || {
                        let mut stamps = Vec::with_capacity(new_tokens);
                        // Timed from here: vision tower, Q-Former, projection, prefill.
                        let mut cache = model.new_cache(&pixels, &ids, None)?;
                        let out = glimpse_generate::generate_stream(
                            &model,
                            &mut cache,
                            &ids,
                            &gen,
                            |_| {
                                stamps.push(Instant::now());
                                true
                            },
                        )?;
                        streamed(out, stamps, new_tokens)
                    }))
                }
                StreamModel::LlavaLlama => {
                    let mut model = LlavaForConditionalGeneration::load(&files, &device)?;
                    if let Some(q) = quantize {
                        let report = model.quantize_language_model(q)?;
                        log(&format!("  glimpse {}: {report}", w.name));
                    }
                    let cfg = model.config();
                    let mut ids = LLAVA_IDS_BEFORE.to_vec();
                    ids.extend(std::iter::repeat_n(
                        cfg.image_token_index,
                        cfg.image_tokens_per_image(),
                    ));
                    ids.extend_from_slice(LLAVA_IDS_AFTER);
                    let ids = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?; // [1, t]
                    let gen = model.generation_config(&forced);
                    gen.validate()?;
                    Ok(Box::new(move || {
                        let mut stamps = Vec::with_capacity(new_tokens);
                        // Timed from here: vision tower, projector, prefill.
                        let features = model.image_features(&pixels)?; // [1, n, d]
                        let mut cache = model.new_cache(Some(&features));
                        let out = glimpse_generate::generate_stream(
                            &model,
                            &mut cache,
                            &ids,
                            &gen,
                            |_| {
                                stamps.push(Instant::now());
                                true
                            },
                        )?;
                        streamed(out, stamps, new_tokens)
                    }))
                }
            }
        }
    }
}

/// `model` with its encoders' linear layers in 8 bits for an 8-bit workload (as
/// `--quantize q8` loads it), else as loaded.
fn int8<M: Linears>(mut model: M, w: &Workload, log: &mut dyn FnMut(&str)) -> Result<M> {
    if w.int8 {
        let report = glimpse_nn::linears::quantize_int8(&mut model)?;
        if report.quantized == 0 {
            return Err(Error::InvalidConfig(format!(
                "{}: this CPU has no 8-bit kernel (AVX2)",
                w.name
            )));
        }
        log(&format!("  glimpse {}: {report}", w.name));
    }
    Ok(model)
}

/// Checks that a streamed generation produced `expected` tokens, one stamp each.
fn streamed(out: Vec<Vec<u32>>, stamps: Vec<Instant>, expected: usize) -> Result<Measured> {
    let n = out.first().map_or(0, Vec::len);
    if n != expected || stamps.len() != expected {
        return Err(Error::Unexpected(format!(
            "generated {n} tokens in {} steps, expected {expected}",
            stamps.len()
        )));
    }
    Ok(Measured {
        items: n,
        token_stamps: stamps,
    })
}

/// A memory field of this process's `/proc/self/status` (Linux: `VmHWM` is the peak
/// resident set, `VmRSS` the current one); `None` elsewhere.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
