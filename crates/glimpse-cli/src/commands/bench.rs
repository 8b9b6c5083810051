//! `glimpse bench`: times Glimpse and the reference (transformers on PyTorch) in one run,
//! on the same machine, on real-size architectures with random weights.
//!
//! Method (see docs/performance.md):
//! * `tools/bench/reference.py make-models` writes the checkpoints once (seeded random
//!   weights, f32 safetensors) under `<out>/models`; both sides load those directories.
//! * Every workload runs in its own child process on each side (`glimpse bench --worker W`
//!   re-invokes this executable; `reference.py time` for PyTorch), so each process's
//!   peak RSS is that workload's alone. A child loads the model, runs `--warmup` untimed
//!   and `--reps` timed calls and prints one JSON line; the median is reported.
//! * Inputs are random tensors of the same shapes on both sides; the timed call is the
//!   library API (`get_image_features`, `get_text_features`, `generate`), so image
//!   decoding and tokenization are not part of the figures.
//! * The streaming workloads (`blip2-opt`, `llava-llama`) also time each generated
//!   token: Glimpse through `glimpse_generate::generate_stream`'s per-step callback, the
//!   reference through a streamer passed to `generate`. They report the time to the
//!   first token (vision and prefill included) and the median gap between tokens; the
//!   prompt ids are the same fixed ids on both sides.
//! * `--quantize q8|q4` runs Glimpse's side of the streaming workloads with the language
//!   model's decoder layers quantised after loading (the reference stays f32), to show
//!   what quantisation buys per token; `load_s` then includes the quantisation.
//! * The `matmul` workload (no model) times an f32 square matrix product on each side
//!   (candle's `Tensor::matmul`, `torch.matmul`): each side's peak matrix rate in this
//!   run. Every workload's floating-point operations per call are counted from its
//!   shapes ([`Workload::flops`]), so the table shows each side's achieved GFLOP/s and
//!   its share of that side's peak.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use glimpse_generate::GenerationConfig;
use glimpse_models::blip::BlipForConditionalGeneration;
use glimpse_models::blip2::Blip2ForConditionalGeneration;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipModel;
use glimpse_models::llava::LlavaForConditionalGeneration;
use glimpse_nn::quant::Quant;
use serde::{Deserialize, Serialize};

use crate::output::print_json;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comma-separated workloads to run (default: all). Known: matmul (the peak matrix
    /// rate, no model), clip-image-b1, clip-image-b8, clip-text-b32, blip-caption,
    /// blip-caption-beam3, blip2-opt, llava-llama.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Timed repetitions per workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed warm-up runs per workload, after loading and before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// New tokens per call for the streaming workloads (blip2-opt, llava-llama), forced
    /// on both sides; at least 2.
    #[arg(long, default_value_t = STREAM_TOKENS)]
    pub new_tokens: usize,
    /// Output directory: benchmark checkpoints (`models/`) and `results.json`.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Where the benchmark checkpoints live (default: `<out>/models`); missing ones are
    /// written by `tools/bench/reference.py make-models`.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Python interpreter with torch and transformers (the reference).
    #[arg(long, default_value = DEFAULT_PYTHON)]
    pub python: PathBuf,
    /// Time Glimpse only (the checkpoints must exist already, or Python must be there
    /// to write them).
    #[arg(long)]
    pub skip_reference: bool,
    /// Machine-readable JSON on stdout instead of a table for people.
    #[arg(long)]
    pub json: bool,
    /// Run Glimpse's side with the language model quantised (`q8` or `q4`); streaming
    /// workloads only (blip2-opt, llava-llama; with matmul, which is unaffected, the
    /// default selection with this flag). The reference stays f32.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<Quant>,
    /// Internal: run one workload on the Glimpse side and print one JSON line.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

const DEFAULT_PYTHON: &str = "tools/.venv/bin/python";
const SCRIPT: &str = "tools/bench/reference.py";
const CLIP_DIR: &str = "clip-vit-base-patch32";
const BLIP_DIR: &str = "blip-image-captioning-base";
const BLIP2_DIR: &str = "blip2-vitb16-opt-125m";
const LLAVA_DIR: &str = "llava-clip-b32-llama-1b";
const CLIP_TEXT_BATCH: usize = 32;
const CLIP_TEXT_LEN: usize = 16;
const CAPTION_TOKENS: usize = 20;
/// Default new tokens per call of the streaming workloads (`--new-tokens`).
const STREAM_TOKENS: usize = 32;
/// Synthetic prompt ids, the same in `reference.py`. BLIP-2: OPT's bos and seven ids,
/// after the 32 query placeholders the processor puts first.
const BLIP2_TEXT_IDS: &[u32] = &[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000];
/// LLaVA: these, one `<image>` per image token, then [`LLAVA_IDS_AFTER`].
const LLAVA_IDS_BEFORE: &[u32] = &[1, 1000, 2000];
const LLAVA_IDS_AFTER: &[u32] = &[3000, 4000, 5000, 6000, 7000];
/// The `matmul` workload: `MATMUL_COUNT` products of two `MATMUL_N` square f32 matrices
/// per timed call (the same in `reference.py`), enough work for a stable rate.
const MATMUL_N: usize = 2048;
const MATMUL_COUNT: usize = 4;
/// The name of the workload whose rate is each side's peak.
const MATMUL: &str = "matmul";

/// What one workload runs; shapes and names are repeated in `reference.py`.
#[derive(Debug, Clone, Copy)]
enum Task {
    /// `MATMUL_COUNT` times `C = A·B`, `MATMUL_N` square, f32; no model.
    Matmul,
    ClipImage {
        batch: usize,
    },
    ClipText,
    Caption {
        beams: usize,
    },
    /// Image + fixed prompt ids -> `--new-tokens` greedy tokens, each timestamped.
    Stream(StreamModel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamModel {
    Blip2Opt,
    LlavaLlama,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    /// The checkpoint directory under `--models`; `None` for `matmul`.
    model_dir: Option<&'static str>,
    task: Task,
    /// Units counted by the throughput column, and how many one call produces.
    unit: &'static str,
    items: usize,
}

const WORKLOADS: &[Workload] = &[
    // First, so that the peak is known before the models run.
    Workload {
        name: MATMUL,
        model_dir: None,
        task: Task::Matmul,
        unit: "call/s",
        items: 1,
    },
    Workload {
        name: "clip-image-b1",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipImage { batch: 1 },
        unit: "img/s",
        items: 1,
    },
    Workload {
        name: "clip-image-b8",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipImage { batch: 8 },
        unit: "img/s",
        items: 8,
    },
    Workload {
        name: "clip-text-b32",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipText,
        unit: "text/s",
        items: CLIP_TEXT_BATCH,
    },
    Workload {
        name: "blip-caption",
        model_dir: Some(BLIP_DIR),
        task: Task::Caption { beams: 1 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
    },
    Workload {
        name: "blip-caption-beam3",
        model_dir: Some(BLIP_DIR),
        task: Task::Caption { beams: 3 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
    },
    Workload {
        name: "blip2-opt",
        model_dir: Some(BLIP2_DIR),
        task: Task::Stream(StreamModel::Blip2Opt),
        unit: "tok/s",
        items: STREAM_TOKENS,
    },
    Workload {
        name: "llava-llama",
        model_dir: Some(LLAVA_DIR),
        task: Task::Stream(StreamModel::LlavaLlama),
        unit: "tok/s",
        items: STREAM_TOKENS,
    },
];

impl Workload {
    /// Items one call produces under `--new-tokens`.
    fn items_per_call(&self, new_tokens: usize) -> usize {
        match self.task {
            Task::Stream(_) => new_tokens,
            _ => self.items,
        }
    }
}

// ---------------------------------------------------------------------------------
// Floating-point operations per call
//
// Counted from the architectures' shapes (the `*_config()` functions of `reference.py`;
// a test checks that the numbers agree): every matrix product, a multiply-add being 2
// FLOPs: linear layers, attention's QK^T and AV, the patch-embedding convolution (a
// matrix product over the patches). Elementwise work (activations, biases, residuals,
// scaling, masking), softmax, layer and RMS norms, embedding lookups and token
// selection are ignored: they are small next to the products at these sizes. Attention over a causal prompt
// counts the whole t × t product, as the kernels compute it (masked entries included).
// Decoding counts what the models run with their caches: a step projects only its new
// positions and attends over all cached ones; the image's cross-attention keys and
// values are computed once per call; the vocabulary projection runs on the last
// position of a step only. The count is the work the result needs: where a side does
// more (the reference runs LLaVA's 12th vision layer, and expands BLIP's image to the
// beams before computing its keys/values; Glimpse's BLIP-2 prefill projects every
// prompt position onto the vocabulary), the extra is not counted and shows as a lower
// rate.

/// Floating-point operations (a multiply-add is 2) of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flops {
    /// One timed call.
    call: u64,
    /// Streaming workloads: one decoding step, the mean over the steps after the first
    /// token (their attention grows with the context).
    per_token: Option<u64>,
}

impl From<u64> for Flops {
    fn from(call: u64) -> Self {
        Self {
            call,
            per_token: None,
        }
    }
}

/// A linear layer on `rows` positions: `2 · rows · inp · out` (the bias ignored).
fn linear(rows: usize, inp: usize, out: usize) -> u64 {
    2 * (rows * inp * out) as u64
}

/// Attention's two products for `q` queries over `k` keys, `width` = heads × head size:
/// `QK^T` and `AV`, `2 · q · k · width` each (keys and values shared between heads, as in
/// grouped-query attention, do not change them).
fn attention(q: usize, k: usize, width: usize) -> u64 {
    4 * (q * k * width) as u64
}

/// A transformer encoder (no cache): width, MLP width, layers.
#[derive(Debug, Clone, Copy)]
struct EncoderShape {
    hidden: usize,
    mlp: usize,
    layers: usize,
}

impl EncoderShape {
    /// One layer over `t` tokens (`d` wide, MLP `f`): Q, K, V, O (`8·t·d²`), the MLP's
    /// two matrices (`4·t·d·f`), QK^T and AV (`4·t²·d`).
    fn layer(&self, t: usize) -> u64 {
        let (d, f) = (self.hidden, self.mlp);
        linear(t, d, 3 * d)
            + linear(t, d, d)
            + linear(t, d, f)
            + linear(t, f, d)
            + attention(t, t, d)
    }
}

/// A ViT image tower: square RGB images cut into `patch_size` patches, plus a class token.
#[derive(Debug, Clone, Copy)]
struct VitShape {
    image_size: usize,
    patch_size: usize,
    encoder: EncoderShape,
}

impl VitShape {
    fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Tokens per image: the patches and the class token.
    fn tokens(&self) -> usize {
        self.patches() + 1
    }

    /// One image through the patch embedding and the first `layers` encoder layers: the
    /// convolution is `2·N·(3·p²)·d` (N patches of 3·p² values, `d` outputs each), then
    /// [`EncoderShape::layer`] over `N + 1` tokens per layer.
    fn flops(&self, layers: usize) -> u64 {
        let conv = linear(
            self.patches(),
            3 * self.patch_size.pow(2),
            self.encoder.hidden,
        );
        conv + layers as u64 * self.encoder.layer(self.tokens())
    }
}

/// A decoder language model run with a KV cache, one sequence per row.
#[derive(Debug, Clone, Copy)]
struct DecoderShape {
    hidden: usize,
    /// Feed-forward width.
    mlp: usize,
    /// A gated feed-forward (LLaMA: gate, up, down: 3 matrices; otherwise 2).
    gated: bool,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    /// BERT's LM head: a `hidden × hidden` transform before the vocabulary projection.
    head_transform: bool,
}

impl DecoderShape {
    /// Keys/values width: `kv_heads × head size`.
    fn kv_width(&self) -> usize {
        self.kv_heads * (self.hidden / self.heads)
    }

    /// One step of `q` new positions over `past` cached ones: per layer Q and O
    /// (`4·q·d²`), K and V of the new positions (`4·q·d·kv`), attention over `past + q`
    /// keys, the feed-forward (`2·q·d·f` per matrix) and, with `cross` image tokens,
    /// cross-attention's Q and O and its attention over them (the image's keys and values
    /// are cached: [`Self::cross_kv`]); then the LM head on the last position (`2·d·V`,
    /// and `2·d²` for BERT's transform).
    fn step(&self, q: usize, past: usize, cross: usize) -> u64 {
        let (d, kv) = (self.hidden, self.kv_width());
        let self_attn = 2 * linear(q, d, d) + 2 * linear(q, d, kv) + attention(q, past + q, d);
        let cross_attn = if cross > 0 {
            2 * linear(q, d, d) + attention(q, cross, d)
        } else {
            0
        };
        let matrices: u64 = if self.gated { 3 } else { 2 };
        let mlp = matrices * linear(q, d, self.mlp);
        let transform = if self.head_transform {
            linear(1, d, d)
        } else {
            0
        };
        self.layers as u64 * (self_attn + cross_attn + mlp) + transform + linear(1, d, self.vocab)
    }

    /// The cross-attention keys and values of `n` image tokens `width` wide, every
    /// layer: `layers · 2 · (2·n·width·d)`.
    fn cross_kv(&self, n: usize, width: usize) -> u64 {
        self.layers as u64 * 2 * linear(n, width, self.hidden)
    }

    /// Generating `tokens` new tokens after a `prompt`-position prompt: the prompt in one
    /// step, then one single-position step per further token (the last token needs
    /// none), `beams` rows from the second step on (the prompt runs once and its cache is
    /// copied per beam). Returns the whole and the part after the first step.
    fn generate(&self, prompt: usize, tokens: usize, beams: usize, cross: usize) -> (u64, u64) {
        let decode: u64 = (1..tokens)
            .map(|j| beams as u64 * self.step(1, prompt + j - 1, cross))
            .sum();
        (self.step(prompt, 0, cross) + decode, decode)
    }
}

/// BLIP-2's Q-Former over its learned queries alone (generation passes no text).
#[derive(Debug, Clone, Copy)]
struct QFormerShape {
    encoder: EncoderShape,
    queries: usize,
    /// Layers `0, k, 2k, ...` cross-attend to the image.
    cross_every: usize,
}

impl QFormerShape {
    /// Every layer: [`EncoderShape::layer`] over the queries; the cross-attending ones
    /// also Q and O on the queries, K and V of the `n` image tokens (`width` wide) and
    /// attention over them.
    fn flops(&self, n: usize, width: usize) -> u64 {
        let (q, d) = (self.queries, self.encoder.hidden);
        let cross = 2 * linear(q, d, d) + 2 * linear(n, width, d) + attention(q, n, d);
        let crossing = self.encoder.layers.div_ceil(self.cross_every) as u64;
        self.encoder.layers as u64 * self.encoder.layer(q) + crossing * cross
    }
}

/// The benchmark architectures, as `reference.py`'s `clip_config()`, `blip_config()`,
/// `blip2_config()` and `llava_config()` write them.
const VIT_B: EncoderShape = EncoderShape {
    hidden: 768,
    mlp: 3072,
    layers: 12,
};
/// CLIP ViT-B/32 at 224 px: 49 patches + class token.
const CLIP_VISION: VitShape = VitShape {
    image_size: 224,
    patch_size: 32,
    encoder: VIT_B,
};
const CLIP_TEXT: EncoderShape = EncoderShape {
    hidden: 512,
    mlp: 2048,
    layers: 12,
};
const CLIP_PROJECTION: usize = 512;
/// BLIP base captioning: ViT-B/16 at 384 px (577 tokens), BERT-base decoder.
const BLIP_VISION: VitShape = VitShape {
    image_size: 384,
    patch_size: 16,
    encoder: VIT_B,
};
const BLIP_TEXT: DecoderShape = DecoderShape {
    hidden: 768,
    mlp: 3072,
    gated: false,
    layers: 12,
    heads: 12,
    kv_heads: 12,
    vocab: 30524,
    head_transform: true,
};
/// BLIP-2: ViT-B/16 at 224 px (197 tokens), Q-Former, OPT-125M size.
const BLIP2_VISION: VitShape = VitShape {
    image_size: 224,
    patch_size: 16,
    encoder: VIT_B,
};
const QFORMER: QFormerShape = QFormerShape {
    encoder: VIT_B,
    queries: 32,
    cross_every: 2,
};
const OPT: DecoderShape = DecoderShape {
    hidden: 768,
    mlp: 3072,
    gated: false,
    layers: 12,
    heads: 12,
    kv_heads: 12,
    vocab: 50272,
    head_transform: false,
};
/// LLaVA: CLIP ViT-B/32 at 224 px read at layer -2, so 11 of its 12 layers run; LLaMA
/// 1.1 B (Llama-3.2-1B shape, LLaVA-1.5 vocabulary).
const LLAVA_VISION: VitShape = CLIP_VISION;
const LLAVA_VISION_LAYERS: usize = 11;
const LLAMA: DecoderShape = DecoderShape {
    hidden: 2048,
    mlp: 8192,
    gated: true,
    layers: 16,
    heads: 32,
    kv_heads: 8,
    vocab: 32064,
    head_transform: false,
};

/// `matmul`: `count` products of `n × n` matrices, `2·n³` each (n² outputs of `n`
/// multiply-adds).
fn matmul_flops(n: usize, count: usize) -> u64 {
    count as u64 * 2 * (n as u64).pow(3)
}

/// `clip-image-b*`: per image the whole ViT-B/32 tower ([`VitShape::flops`], 12 layers
/// over 50 tokens) and the visual projection of the pooled class token (`2·768·512`).
fn clip_image_flops(batch: usize) -> u64 {
    let v = CLIP_VISION;
    batch as u64 * (v.flops(v.encoder.layers) + linear(1, v.encoder.hidden, CLIP_PROJECTION))
}

/// `clip-text-b32`: per text the 12 causal layers over `len` tokens
/// ([`EncoderShape::layer`], 512 wide) and the text projection of the pooled token.
fn clip_text_flops(batch: usize, len: usize) -> u64 {
    let t = CLIP_TEXT;
    batch as u64 * (t.layers as u64 * t.layer(len) + linear(1, t.hidden, CLIP_PROJECTION))
}

/// `blip-caption*`: the ViT-B/16 tower at 384 px (all 12 layers over 577 tokens), the
/// decoder's cross-attention keys and values of the 577 image tokens (once), then
/// [`DecoderShape::generate`] from the one-position prompt (bos): `tokens` steps, each
/// cross-attending to the image, with `beams` rows after the first.
fn caption_flops(beams: usize, tokens: usize) -> u64 {
    let (v, n) = (BLIP_VISION, BLIP_VISION.tokens());
    let (generate, _) = BLIP_TEXT.generate(1, tokens, beams, n);
    v.flops(v.encoder.layers) + BLIP_TEXT.cross_kv(n, v.encoder.hidden) + generate
}

/// `blip2-opt`: the ViT-B/16 tower at 224 px (12 layers, 197 tokens), the Q-Former (32
/// queries, cross-attention in 6 of 12 layers), `language_projection` of the queries,
/// then OPT over the 40-position prompt (the queries and [`BLIP2_TEXT_IDS`]) and one
/// step per further token.
fn blip2_opt_flops(new_tokens: usize) -> Flops {
    let v = BLIP2_VISION;
    let q = QFORMER.queries;
    let prompt = q + BLIP2_TEXT_IDS.len();
    let (generate, decode) = OPT.generate(prompt, new_tokens, 1, 0);
    let call = v.flops(v.encoder.layers)
        + QFORMER.flops(v.tokens(), v.encoder.hidden)
        + linear(q, QFORMER.encoder.hidden, OPT.hidden)
        + generate;
    streaming_flops(call, decode, new_tokens)
}

/// `llava-llama`: the CLIP ViT-B/32 tower up to layer -2 (11 layers over 50 tokens), the
/// projector on the 49 patch features (`2·49·(768·2048 + 2048·2048)`), then LLaMA over
/// the 57-position prompt ([`LLAVA_IDS_BEFORE`], 49 `<image>`, [`LLAVA_IDS_AFTER`]) and
/// one step per further token.
fn llava_llama_flops(new_tokens: usize) -> Flops {
    let v = LLAVA_VISION;
    let (n, d) = (v.patches(), LLAMA.hidden);
    let projector = linear(n, v.encoder.hidden, d) + linear(n, d, d);
    let prompt = LLAVA_IDS_BEFORE.len() + n + LLAVA_IDS_AFTER.len();
    let (generate, decode) = LLAMA.generate(prompt, new_tokens, 1, 0);
    let call = v.flops(LLAVA_VISION_LAYERS) + projector + generate;
    streaming_flops(call, decode, new_tokens)
}

/// A streaming call's FLOPs with the mean of its `new_tokens - 1` decoding steps.
fn streaming_flops(call: u64, decode: u64, new_tokens: usize) -> Flops {
    Flops {
        call,
        per_token: (new_tokens > 1).then(|| decode / (new_tokens as u64 - 1)),
    }
}

impl Workload {
    /// Floating-point operations of one call under `--new-tokens` (see the functions
    /// above for what each counts).
    fn flops(&self, new_tokens: usize) -> Flops {
        match self.task {
            Task::Matmul => matmul_flops(MATMUL_N, MATMUL_COUNT).into(),
            Task::ClipImage { batch } => clip_image_flops(batch).into(),
            Task::ClipText => clip_text_flops(CLIP_TEXT_BATCH, CLIP_TEXT_LEN).into(),
            Task::Caption { beams } => caption_flops(beams, CAPTION_TOKENS).into(),
            Task::Stream(StreamModel::Blip2Opt) => blip2_opt_flops(new_tokens),
            Task::Stream(StreamModel::LlavaLlama) => llava_llama_flops(new_tokens),
        }
    }
}

fn workload(name: &str) -> Result<Workload> {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .copied()
        .with_context(|| {
            let known: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
            format!(
                "--workloads: unknown workload {name:?}; known: {}",
                known.join(", ")
            )
        })
}

/// One side's measurement of one workload: the JSON line a child prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideResult {
    pub side: String,
    pub workload: String,
    pub reps_s: Vec<f64>,
    pub median_s: f64,
    pub warmup: usize,
    pub items_per_rep: usize,
    pub load_s: f64,
    /// High-water mark of the child's resident set (model load included).
    pub peak_rss_bytes: Option<u64>,
    /// Resident set at the end (model loaded, after the reps): what stays, without
    /// load-time transients such as the pages of memory-mapped checkpoint files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_end_bytes: Option<u64>,
    pub threads: usize,
    /// Streaming workloads: seconds from the call to its first new token, per rep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttft_reps_s: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_median_s: Option<f64>,
    /// Streaming workloads: per rep, the median gap between consecutive new tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_token_reps_s: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_token_median_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_implementation: Option<String>,
    /// Glimpse side: the language model's weight quantisation (`q8`, `q4`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct WorkloadReport {
    workload: String,
    unit: String,
    items_per_rep: usize,
    /// Floating-point operations of one call, in 1e9 (see [`Workload::flops`]).
    gflop_per_call: f64,
    /// Streaming workloads: those of one decoding step (one new token), the mean over
    /// the steps after the first token.
    #[serde(skip_serializing_if = "Option::is_none")]
    gflop_per_token: Option<f64>,
    glimpse: Option<SideResult>,
    reference: Option<SideResult>,
    /// Reference median / Glimpse median: above 1 means Glimpse is faster.
    ratio: Option<f64>,
    /// Reference fastest rep / Glimpse fastest rep: on a shared machine, where other
    /// load slows some reps of one side and not the other's, the least disturbed pair.
    best_ratio: Option<f64>,
    /// The same for the time to first token and the time per token (streaming workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_token_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    reps: usize,
    warmup: usize,
    new_tokens: usize,
    cpus: usize,
    glimpse_build: &'static str,
    /// Glimpse's language-model quantisation (streaming workloads), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    models: PathBuf,
    results: Vec<WorkloadReport>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.new_tokens < 2 {
        bail!("--new-tokens must be at least 2 (the time per token needs two tokens)");
    }
    let models = args
        .models
        .clone()
        .unwrap_or_else(|| args.out.join("models"));
    if let Some(name) = &args.worker {
        return run_worker(
            &workload(name)?,
            &models,
            args.reps,
            args.warmup,
            args.new_tokens,
            args.quantize,
        );
    }

    let streaming = |w: &Workload| matches!(w.task, Task::Stream(_));
    // `matmul` has no model to quantise and stays in: the peak that the shares need.
    let quantizable = |w: &Workload| streaming(w) || w.model_dir.is_none();
    let selected: Vec<Workload> = if args.workloads.is_empty() {
        WORKLOADS
            .iter()
            .filter(|w| args.quantize.is_none() || quantizable(w))
            .copied()
            .collect()
    } else {
        args.workloads
            .iter()
            .map(|n| workload(n.trim()))
            .collect::<Result<_>>()?
    };
    if let Some(q) = args.quantize {
        if let Some(w) = selected.iter().find(|w| !quantizable(w)) {
            bail!(
                "--quantize {q}: {} has no language model to quantise; \
                 --quantize applies to blip2-opt and llava-llama",
                w.name
            );
        }
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; timings are not meaningful \
             (use `cargo run --release -p glimpse-cli -- bench`)"
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create directory", args.out.display()))?;

    let missing_models: Vec<&str> = {
        let mut dirs: Vec<&str> = selected.iter().filter_map(|w| w.model_dir).collect();
        dirs.sort_unstable();
        dirs.dedup();
        dirs.into_iter()
            .filter(|d| !has_checkpoint(&models.join(d)))
            .collect()
    };
    let python = if args.skip_reference && missing_models.is_empty() {
        None
    } else {
        let why = if args.skip_reference {
            format!(
                "it writes the missing benchmark checkpoints ({}) in {}",
                missing_models.join(", "),
                models.display()
            )
        } else {
            "it runs the reference (or pass --skip-reference)".to_string()
        };
        Some(Reference::locate(&args.python).with_context(|| format!("Python is needed: {why}"))?)
    };
    if !missing_models.is_empty() {
        let python = python.as_ref().expect("located above");
        eprintln!(
            "writing benchmark checkpoints ({}) to {} ...",
            missing_models.join(", "),
            models.display()
        );
        python.make_models(&models)?;
    }
    let reference = if args.skip_reference { None } else { python };

    let exe = std::env::current_exe().context("finding the glimpse executable")?;
    let mut results = Vec::new();
    for (i, w) in selected.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, selected.len(), w.name);
        let mut errors = Vec::new();
        let mut worker = Command::new(&exe);
        worker
            .arg("bench")
            .arg("--worker")
            .arg(w.name)
            .arg("--models")
            .arg(&models)
            .args([
                "--reps",
                &args.reps.to_string(),
                "--warmup",
                &args.warmup.to_string(),
                "--new-tokens",
                &args.new_tokens.to_string(),
            ]);
        if let Some(q) = args.quantize.filter(|_| streaming(w)) {
            worker.args(["--quantize", q.name()]);
        }
        let glimpse = run_child(worker, "glimpse worker")
            .map_err(|e| errors.push(format!("glimpse: {e:#}")))
            .ok();
        let reference = reference.as_ref().and_then(|py| {
            py.time(
                w.model_dir.map(|d| models.join(d)).as_deref(),
                w.name,
                args.reps,
                args.warmup,
                args.new_tokens,
            )
            .map_err(|e| errors.push(format!("reference: {e:#}")))
            .ok()
        });
        let items = w.items_per_call(args.new_tokens);
        for side in [&glimpse, &reference].into_iter().flatten() {
            if side.items_per_rep != items {
                errors.push(format!(
                    "{} produced {} {} per call, expected {items}",
                    side.side, side.items_per_rep, w.unit
                ));
            }
        }
        let ratio_of = |pick: fn(&SideResult) -> Option<f64>| match (&glimpse, &reference) {
            (Some(g), Some(r)) => match (pick(g), pick(r)) {
                (Some(g), Some(r)) if g > 0.0 => Some(r / g),
                _ => None,
            },
            _ => None,
        };
        let flops = w.flops(args.new_tokens);
        results.push(WorkloadReport {
            workload: w.name.to_string(),
            unit: w.unit.to_string(),
            items_per_rep: items,
            gflop_per_call: flops.call as f64 * 1e-9,
            gflop_per_token: flops.per_token.map(|f| f as f64 * 1e-9),
            ratio: ratio_of(|s| Some(s.median_s)),
            best_ratio: ratio_of(|s| fastest(&s.reps_s)),
            ttft_ratio: ratio_of(|s| s.ttft_median_s),
            per_token_ratio: ratio_of(|s| s.per_token_median_s),
            glimpse,
            reference,
            errors,
        });
    }

    let report = Report {
        reps: args.reps,
        warmup: args.warmup,
        new_tokens: args.new_tokens,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        glimpse_build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        quantize: args.quantize.map(|q| q.name().to_string()),
        models,
        results,
    };
    let path = args.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        print_json(&report)?;
    } else {
        print_table(&report);
        println!("results written to {}", path.display());
    }
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| !r.errors.is_empty())
        .map(|r| r.workload.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("some workloads failed: {}", failed.join(", "));
    }
    Ok(())
}

fn has_checkpoint(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// Runs a child that prints its result as the last line of stdout; stderr (progress)
/// goes straight to ours.
fn run_child(mut cmd: Command, what: &str) -> Result<SideResult> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what} failed ({}); its messages are above", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: unreadable result {line:?}"))
}

/// The Python side: an interpreter and `reference.py`.
struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    fn locate(python: &Path) -> Result<Self> {
        let hint = "run `bash tools/setup_venv.sh` to create it, or pass --python PATH";
        let python = if python == Path::new(DEFAULT_PYTHON) {
            find_in_workspace(DEFAULT_PYTHON)
                .with_context(|| format!("reference Python {DEFAULT_PYTHON} not found: {hint}"))?
        } else if python.components().count() > 1 && !python.exists() {
            bail!("--python {}: no such file: {hint}", python.display());
        } else {
            python.to_path_buf()
        };
        let script = find_in_workspace(SCRIPT).with_context(|| {
            format!("{SCRIPT} not found; run glimpse bench from the repository root")
        })?;
        Ok(Self { python, script })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).env("HF_HUB_OFFLINE", "1");
        cmd
    }

    fn make_models(&self, out: &Path) -> Result<()> {
        let status = self
            .command()
            .arg("make-models")
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", self.python.display()))?;
        if !status.success() {
            bail!("reference.py make-models failed ({status}); its messages are above");
        }
        Ok(())
    }

    /// Times `workload` in a child; `model` is its checkpoint (`None` for `matmul`).
    fn time(
        &self,
        model: Option<&Path>,
        workload: &str,
        reps: usize,
        warmup: usize,
        new_tokens: usize,
    ) -> Result<SideResult> {
        let mut cmd = self.command();
        cmd.arg("time");
        if let Some(model) = model {
            cmd.arg("--model").arg(model);
        }
        cmd.args(["--workload", workload])
            .args(["--reps", &reps.to_string(), "--warmup", &warmup.to_string()])
            .args(["--new-tokens", &new_tokens.to_string()]);
        run_child(cmd, "reference.py time")
    }
}

/// `rel` under the current directory, else under the workspace this binary was built
/// from (so the bench also works when started from elsewhere in the checkout).
fn find_in_workspace(rel: &str) -> Option<PathBuf> {
    let here = PathBuf::from(rel);
    if here.exists() {
        return Some(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    built.exists().then_some(built)
}

// ---------------------------------------------------------------------------------
// Glimpse side (child process)

fn run_worker(
    w: &Workload,
    models: &Path,
    reps: usize,
    warmup: usize,
    new_tokens: usize,
    quantize: Option<Quant>,
) -> Result<()> {
    let dir = w.model_dir.map(|d| models.join(d));
    if let Some(dir) = dir.as_deref().filter(|d| !has_checkpoint(d)) {
        bail!(
            "{}: no benchmark checkpoint (run `glimpse bench` without --worker)",
            dir.display()
        );
    }
    let start = Instant::now();
    let mut step = build_step(w, dir.as_deref(), new_tokens, quantize)?;
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
                eprintln!(
                    "  glimpse {}: {what} {dt:.3} s, first token {ttft:.3} s, {:.1} ms/token",
                    w.name,
                    per_token * 1e3
                );
                if i >= warmup {
                    ttft_reps_s.push(ttft);
                    per_token_reps_s.push(per_token);
                }
            }
            None => eprintln!("  glimpse {}: {what} {dt:.3} s", w.name),
        }
        if i >= warmup {
            reps_s.push(dt);
        }
    }
    let median_of = |xs: &[f64]| (!xs.is_empty()).then(|| median(xs));
    print_json(&SideResult {
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
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
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

/// Time to first token (from `start`) and the median gap between consecutive tokens,
/// in seconds; `None` without at least two stamps.
fn token_times(start: Instant, stamps: &[Instant]) -> Option<(f64, f64)> {
    let first = stamps.first()?;
    let gaps: Vec<f64> = stamps
        .windows(2)
        .map(|p| (p[1] - p[0]).as_secs_f64())
        .collect();
    if gaps.is_empty() {
        return None;
    }
    Some(((*first - start).as_secs_f64(), median(&gaps)))
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
) -> Result<Step> {
    let device = Device::Cpu;
    let mut rng = SplitMix(0x5EED);
    if let Task::Matmul = w.task {
        // Inputs made once; the call is the kernel every Glimpse model's layers use.
        let a = rng.tensor(&[MATMUL_N, MATMUL_N], &device)?;
        let b = rng.tensor(&[MATMUL_N, MATMUL_N], &device)?;
        return Ok(Box::new(move || {
            for _ in 0..MATMUL_COUNT {
                let c = a.matmul(&b)?; // [n, n]
                if c.dims() != [MATMUL_N, MATMUL_N] {
                    bail!("matmul produced {:?}", c.dims());
                }
            }
            Ok(1.into())
        }));
    }
    let dir = dir.with_context(|| format!("{} needs a model directory", w.name))?;
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}", dir.join("config.json").display()))?,
    )
    .with_context(|| format!("parsing {}", dir.join("config.json").display()))?;
    let field = |section: &str, key: &str| -> Result<usize> {
        config[section][key]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("{}: no {section}.{key}", dir.display()))
    };
    let dir_str = dir.to_str().context("model directory is not UTF-8")?;
    let files = ModelFiles::resolve(dir_str)?;

    match w.task {
        Task::Matmul => unreachable!("built above, without a model"),
        Task::ClipImage { batch } => {
            let model = ClipModel::load(&files, &device)?;
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[batch, 3, size, size], &device)?;
            Ok(Box::new(move || {
                let features = model.get_image_features(&pixels)?; // [batch, proj]
                Ok(features.dim(0)?.into())
            }))
        }
        Task::ClipText => {
            let model = ClipModel::load(&files, &device)?;
            let eos = field("text_config", "eos_token_id")? as u32;
            // Ids below bos/eos (49406, 49407), eos last: pooling picks the final position.
            let mut ids: Vec<u32> = (0..CLIP_TEXT_BATCH * CLIP_TEXT_LEN)
                .map(|_| (rng.next() % 49406) as u32)
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
            let model = BlipForConditionalGeneration::load(&files, &device)?;
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[1, 3, size, size], &device)?;
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
                    bail!("generated {n} tokens, expected {CAPTION_TOKENS}");
                }
                Ok(n.into())
            }))
        }
        Task::Stream(kind) => {
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[1, 3, size, size], &device)?;
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
                        eprintln!("  glimpse {}: {report}", w.name);
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
                        eprintln!("  glimpse {}: {report}", w.name);
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

/// Checks that a streamed generation produced `expected` tokens, one stamp each.
fn streamed(out: Vec<Vec<u32>>, stamps: Vec<Instant>, expected: usize) -> Result<Measured> {
    let n = out.first().map_or(0, Vec::len);
    if n != expected || stamps.len() != expected {
        bail!(
            "generated {n} tokens in {} steps, expected {expected}",
            stamps.len()
        );
    }
    Ok(Measured {
        items: n,
        token_stamps: stamps,
    })
}

/// Deterministic inputs without a dependency (candle cannot seed its CPU generator).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Values uniform in [-2, 2): the range of normalised pixels.
    fn tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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

// ---------------------------------------------------------------------------------
// Printing for people

fn print_table(report: &Report) {
    let threads = |pick: fn(&WorkloadReport) -> Option<&SideResult>| {
        report.results.iter().find_map(pick).map(|s| s.threads)
    };
    println!(
        "glimpse ({} build, {} threads{}) vs reference (transformers on PyTorch, {} threads); \
         {} cpus; median of {} reps after {} warm-up",
        report.glimpse_build,
        fmt_opt(threads(|r| r.glimpse.as_ref())),
        report
            .quantize
            .as_ref()
            .map_or(String::new(), |q| format!(", {q} language model")),
        fmt_opt(threads(|r| r.reference.as_ref())),
        report.cpus,
        report.reps,
        report.warmup,
    );
    println!(
        "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
        "workload", "glimpse", "reference", "ratio", "rss glimpse", "rss ref"
    );
    let peaks = [
        peak_gflops(report, |r| r.glimpse.as_ref()),
        peak_gflops(report, |r| r.reference.as_ref()),
    ];
    for r in &report.results {
        let side = |s: &Option<SideResult>| match s {
            Some(s) => format!(
                "{:.3} s ({:.1} {})",
                s.median_s,
                s.items_per_rep as f64 / s.median_s,
                r.unit
            ),
            None => "-".into(),
        };
        let rss = |s: &Option<SideResult>| {
            s.as_ref()
                .and_then(|s| s.peak_rss_bytes)
                .map_or("-".into(), |b| {
                    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
                })
        };
        println!(
            "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
            r.workload,
            side(&r.glimpse),
            side(&r.reference),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            rss(&r.glimpse),
            rss(&r.reference),
        );
        // Achieved GFLOP/s per side (and share of its peak), the FLOPs counted at the end.
        let flop_line = |label: &str, gflop: f64, secs: fn(&SideResult) -> Option<f64>, per| {
            let cell = |s: &Option<SideResult>, peak: Option<f64>| {
                let achieved = s.as_ref().and_then(secs).and_then(|t| rate(gflop, t));
                rate_cell(achieved, peak, r.workload == MATMUL)
            };
            println!(
                "{:<20} {:>24} {:>24} {:>7}  {gflop:.2} GFLOP/{per}",
                label,
                cell(&r.glimpse, peaks[0]),
                cell(&r.reference, peaks[1]),
                "",
            );
        };
        flop_line(
            "  GFLOP/s (% peak)",
            r.gflop_per_call,
            |s| Some(s.median_s),
            "call",
        );
        if r.workload != MATMUL {
            let best = |s: &Option<SideResult>| {
                s.as_ref()
                    .and_then(|s| fastest(&s.reps_s))
                    .map_or("-".into(), |t| format!("{t:.3} s"))
            };
            println!(
                "{:<20} {:>24} {:>24} {:>7}",
                "  fastest rep",
                best(&r.glimpse),
                best(&r.reference),
                r.best_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            );
        }
        let streamed = |pick: fn(&SideResult) -> Option<f64>| {
            [&r.glimpse, &r.reference].map(|s| s.as_ref().and_then(pick))
        };
        let ttft = streamed(|s| s.ttft_median_s);
        let per_token = streamed(|s| s.per_token_median_s);
        if ttft.iter().chain(&per_token).any(Option::is_some) {
            let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}x"));
            let secs = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3} s"));
            let per_tok = |x: Option<f64>| {
                x.map_or("-".into(), |x| {
                    format!("{:.1} ms ({:.1} tok/s)", x * 1e3, 1.0 / x)
                })
            };
            println!(
                "{:<20} {:>24} {:>24} {:>7}",
                "  first token",
                secs(ttft[0]),
                secs(ttft[1]),
                ratio(r.ttft_ratio),
            );
            println!(
                "{:<20} {:>24} {:>24} {:>7}",
                "  per token",
                per_tok(per_token[0]),
                per_tok(per_token[1]),
                ratio(r.per_token_ratio),
            );
            if let Some(gflop) = r.gflop_per_token {
                flop_line(
                    "  per token GFLOP/s",
                    gflop,
                    |s| s.per_token_median_s,
                    "token",
                );
            }
        }
        for e in &r.errors {
            println!("  error: {e}");
        }
    }
    println!("ratio = reference median / glimpse median (above 1: Glimpse is faster)");
    println!(
        "fastest rep: each side's shortest rep and their ratio (the least disturbed pair on a \
         shared machine)"
    );
    println!(
        "GFLOP/s = matrix-product FLOPs of one call (per token: of one decoding step) / median time"
    );
    if peaks.iter().any(Option::is_some) {
        println!("% peak = share of the same side's {MATMUL} rate in this run");
    }
    if report.results.iter().any(|r| r.ttft_ratio.is_some()) {
        println!(
            "first token: from the call to the first new token (vision and prefill); \
             per token: median gap between new tokens ({} per call)",
            report.new_tokens
        );
    }
    if let Some(attn) = report
        .results
        .iter()
        .filter(|r| r.workload != MATMUL) // no model, no attention
        .filter_map(|r| r.reference.as_ref())
        .map(|s| {
            format!(
                "{}={}",
                s.workload,
                s.attn_implementation.as_deref().unwrap_or("?")
            )
        })
        .reduce(|a, b| format!("{a}, {b}"))
    {
        println!("reference attention: {attn}");
    }
}

/// The shortest of some timed reps.
fn fastest(reps: &[f64]) -> Option<f64> {
    reps.iter().copied().reduce(f64::min)
}

/// GFLOP/s of `gflop` done in `secs` seconds.
fn rate(gflop: f64, secs: f64) -> Option<f64> {
    (secs > 0.0).then_some(gflop / secs)
}

/// One side's peak GFLOP/s: its rate on the `matmul` workload of this run, if it ran.
fn peak_gflops(report: &Report, pick: fn(&WorkloadReport) -> Option<&SideResult>) -> Option<f64> {
    let r = report.results.iter().find(|r| r.workload == MATMUL)?;
    rate(r.gflop_per_call, pick(r)?.median_s)
}

/// `R.R (S%)`: an achieved GFLOP/s and its share of the side's peak (`(peak)` on the
/// peak's own row; the rate alone when the peak is unknown).
fn rate_cell(achieved: Option<f64>, peak: Option<f64>, is_peak: bool) -> String {
    match (achieved, peak) {
        (None, _) => "-".into(),
        (Some(a), _) if is_peak => format!("{a:.1} (peak)"),
        (Some(a), Some(p)) if p > 0.0 => format!("{a:.1} ({:.0}%)", 100.0 * a / p),
        (Some(a), _) => format!("{a:.1}"),
    }
}

fn fmt_opt(x: Option<usize>) -> String {
    x.map_or("?".into(), |x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn every_workload_is_found_and_unknown_ones_are_named() {
        for w in WORKLOADS {
            assert_eq!(workload(w.name).unwrap().name, w.name);
        }
        let err = workload("clip-image-b2").unwrap_err().to_string();
        assert!(
            err.contains("clip-image-b2") && err.contains("clip-image-b8"),
            "{err}"
        );
    }

    #[test]
    fn token_times_are_first_token_and_median_gap() {
        use std::time::Duration;
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (ttft, per_token) = token_times(t0, &[at(100), at(110), at(130), at(140)]).unwrap();
        assert!((ttft - 0.100).abs() < 1e-9, "{ttft}");
        assert!((per_token - 0.010).abs() < 1e-9, "{per_token}"); // gaps 10, 20, 10 ms
        assert!(token_times(t0, &[at(100)]).is_none());
        assert!(token_times(t0, &[]).is_none());
    }

    #[test]
    fn streaming_workloads_count_new_tokens() {
        for name in ["blip2-opt", "llava-llama"] {
            let w = workload(name).unwrap();
            assert!(matches!(w.task, Task::Stream(_)));
            assert_eq!(w.items_per_call(STREAM_TOKENS), STREAM_TOKENS);
            assert_eq!(w.items_per_call(8), 8);
        }
        assert_eq!(
            workload("blip-caption").unwrap().items_per_call(8),
            CAPTION_TOKENS
        );
    }

    /// Workload names, directories and prompt ids are written twice; keep them equal.
    #[test]
    fn reference_script_agrees_on_names_dirs_and_prompt_ids() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(SCRIPT);
        let text = std::fs::read_to_string(&script).unwrap();
        for w in WORKLOADS {
            assert!(
                text.contains(&format!("\"{}\"", w.name)),
                "{} not in {SCRIPT}",
                w.name
            );
            match w.model_dir {
                Some(dir) => assert!(text.contains(&format!("\"{dir}\"")), "{dir}"),
                None => assert!(
                    text.contains(&format!("\"{}\": (None,", w.name)),
                    "{SCRIPT}: {} should have no model directory",
                    w.name
                ),
            }
        }
        let list = |ids: &[u32]| {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            format!("[{}]", ids.join(", "))
        };
        for (name, ids) in [
            ("BLIP2_TEXT_IDS", BLIP2_TEXT_IDS),
            ("LLAVA_IDS_BEFORE", LLAVA_IDS_BEFORE),
            ("LLAVA_IDS_AFTER", LLAVA_IDS_AFTER),
        ] {
            let line = format!("{name} = {}", list(ids));
            assert!(text.contains(&line), "{SCRIPT} lacks `{line}`");
        }
        assert!(text.contains(&format!("STREAM_TOKENS = {STREAM_TOKENS}")));
        assert!(text.contains(&format!("MATMUL_N = {MATMUL_N}")));
        assert!(text.contains(&format!("MATMUL_COUNT = {MATMUL_COUNT}")));
    }

    /// `key=value` of the `name = dict(...)` (or the `name(...)` call) inside
    /// `reference.py`'s `def function()`.
    fn config_value(text: &str, function: &str, name: &str, key: &str) -> String {
        let body = text
            .split(&format!("\ndef {function}("))
            .nth(1)
            .and_then(|rest| rest.split("\ndef ").next())
            .unwrap_or_else(|| panic!("{SCRIPT}: no def {function}"));
        let block = body
            .split(&format!("{name}("))
            .nth(1)
            .and_then(|rest| rest.split("\n    )").next())
            .unwrap_or_else(|| panic!("{SCRIPT} {function}: no {name}("));
        block
            .split([',', '\n'])
            .find_map(|item| {
                let item = item.trim().trim_end_matches(')');
                item.strip_prefix(&format!("{key}="))
            })
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{SCRIPT} {function}: {name} has no {key}"))
    }

    /// The shapes the FLOP count uses are those `reference.py` writes into the configs.
    #[test]
    fn flop_shapes_agree_with_the_reference_configs() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(SCRIPT);
        let text = std::fs::read_to_string(&script).unwrap();
        let check = |function: &str, name: &str, pairs: &[(&str, usize)]| {
            for &(key, want) in pairs {
                let got = config_value(&text, function, name, key);
                assert_eq!(got, want.to_string(), "{function} {name}.{key}");
            }
        };
        let vit = |v: &VitShape| {
            vec![
                ("hidden_size", v.encoder.hidden),
                ("intermediate_size", v.encoder.mlp),
                ("num_hidden_layers", v.encoder.layers),
                ("image_size", v.image_size),
                ("patch_size", v.patch_size),
            ]
        };
        let decoder = |d: &DecoderShape| {
            let (mlp_key, heads_key) = if d.gated {
                ("intermediate_size", "num_key_value_heads")
            } else if d.head_transform {
                ("intermediate_size", "num_attention_heads")
            } else {
                ("ffn_dim", "num_attention_heads")
            };
            vec![
                ("hidden_size", d.hidden),
                (mlp_key, d.mlp),
                ("num_hidden_layers", d.layers),
                ("num_attention_heads", d.heads),
                (heads_key, d.kv_heads),
                ("vocab_size", d.vocab),
            ]
        };
        check("clip_config", "vision = dict", &vit(&CLIP_VISION));
        check(
            "clip_config",
            "text = dict",
            &[
                ("hidden_size", CLIP_TEXT.hidden),
                ("intermediate_size", CLIP_TEXT.mlp),
                ("num_hidden_layers", CLIP_TEXT.layers),
            ],
        );
        check(
            "clip_config",
            "return CLIPConfig",
            &[("projection_dim", CLIP_PROJECTION)],
        );
        check("blip_config", "vision = dict", &vit(&BLIP_VISION));
        check("blip_config", "text = dict", &decoder(&BLIP_TEXT));
        check(
            "blip_config",
            "text = dict",
            &[("encoder_hidden_size", BLIP_VISION.encoder.hidden)],
        );
        check("blip2_config", "vision = dict", &vit(&BLIP2_VISION));
        check(
            "blip2_config",
            "qformer = dict",
            &[
                ("hidden_size", QFORMER.encoder.hidden),
                ("intermediate_size", QFORMER.encoder.mlp),
                ("num_hidden_layers", QFORMER.encoder.layers),
                ("cross_attention_frequency", QFORMER.cross_every),
            ],
        );
        check(
            "blip2_config",
            "return Blip2Config",
            &[("num_query_tokens", QFORMER.queries)],
        );
        check("blip2_config", "text = dict", &decoder(&OPT));
        check(
            "blip2_config",
            "text = dict",
            &[("word_embed_proj_dim", OPT.hidden)],
        );
        check("llava_config", "vision = dict", &vit(&LLAVA_VISION));
        check("llava_config", "text = dict", &decoder(&LLAMA));
        check(
            "llava_config",
            "return LlavaConfig",
            &[("image_seq_length", LLAVA_VISION.patches())],
        );
        // Layer -2 of the tower's hidden states: the output of its next-to-last layer.
        assert_eq!(
            config_value(
                &text,
                "llava_config",
                "return LlavaConfig",
                "vision_feature_layer"
            ),
            "-2"
        );
        assert_eq!(LLAVA_VISION_LAYERS, LLAVA_VISION.encoder.layers - 1);
        assert_eq!(
            config_value(&text, "llava_config", "text = dict", "tie_word_embeddings"),
            "False"
        );
    }

    #[test]
    fn matmul_counts_two_n_cubed_per_product() {
        assert_eq!(matmul_flops(3, 1), 54);
        assert_eq!(matmul_flops(2048, 4), 4 * 2 * 2048 * 2048 * 2048);
        let w = workload(MATMUL).unwrap();
        assert_eq!(w.model_dir, None);
        assert_eq!(w.items_per_call(STREAM_TOKENS), 1);
        assert_eq!(
            w.flops(STREAM_TOKENS),
            Flops {
                call: 68_719_476_736,
                per_token: None
            }
        );
        assert_eq!(
            WORKLOADS[0].name, MATMUL,
            "first: the peak before the models"
        );
    }

    /// CLIP ViT-B/32, written out by hand: 50 tokens (49 patches of 32 × 32 × 3 and the
    /// class token), 12 layers 768 wide with a 3072-wide MLP, projection to 512.
    #[test]
    fn clip_image_flops_match_a_hand_count() {
        let (t, d, f, layers) = (50u64, 768u64, 3072u64, 12u64);
        let layer = 8 * d * d * t + 4 * d * f * t + 4 * t * t * d;
        let patch_conv = 49 * 3072 * 768 * 2;
        let projection = 2 * 768 * 512;
        let image = layers * layer + patch_conv + projection;
        assert_eq!(clip_image_flops(1), image);
        assert_eq!(clip_image_flops(8), 8 * image);
        assert!((8.7e9..8.9e9).contains(&(image as f64)), "{image}");
        assert_eq!(workload("clip-image-b8").unwrap().flops(32).call, 8 * image);
    }

    #[test]
    fn clip_text_flops_match_a_hand_count() {
        let (t, d, f) = (16u64, 512u64, 2048u64);
        let text = 12 * (8 * d * d * t + 4 * d * f * t + 4 * t * t * d) + 2 * d * 512;
        assert_eq!(clip_text_flops(32, 16), 32 * text);
    }

    /// A decoding step by hand: LLaMA with a 100-position cache, one new token.
    #[test]
    fn decoder_steps_count_the_cache_and_grouped_kv() {
        let (d, kv, f, v) = (2048u64, 512u64, 8192u64, 32064u64);
        let keys = 101;
        let layer = 4 * d * d + 4 * d * kv + 6 * d * f + 4 * keys * d;
        assert_eq!(LLAMA.step(1, 100, 0), 16 * layer + 2 * d * v);
        // A prompt step: every position projected, the full t × t attention, one head row.
        let t = 57;
        let layer = t * (4 * d * d + 4 * d * kv + 6 * d * f) + 4 * t * t * d;
        assert_eq!(LLAMA.step(57, 0, 0), 16 * layer + 2 * d * v);
        // BERT with cross-attention to 577 cached image tokens and the head's transform.
        let (d, f, v) = (768u64, 3072u64, 30524u64);
        let layer = 4 * d * d + 4 * d * d + 4 * d * f + 4 * 3 * d + 4 * d * d + 4 * 577 * d;
        assert_eq!(
            BLIP_TEXT.step(1, 2, 577),
            12 * layer + 2 * d * d + 2 * d * v
        );
    }

    #[test]
    fn generation_runs_the_prompt_once_then_a_step_per_token() {
        let (whole, decode) = OPT.generate(40, 32, 1, 0);
        let steps: u64 = (0..31).map(|j| OPT.step(1, 40 + j, 0)).sum();
        assert_eq!(decode, steps);
        assert_eq!(whole, OPT.step(40, 0, 0) + steps);
        // Beams: the first step once, the 19 others per beam.
        let (one, one_decode) = BLIP_TEXT.generate(1, 20, 1, 577);
        let (three, three_decode) = BLIP_TEXT.generate(1, 20, 3, 577);
        assert_eq!(three_decode, 3 * one_decode);
        assert_eq!(three - one, 2 * one_decode);
        assert!(caption_flops(3, 20) > caption_flops(1, 20));
    }

    #[test]
    fn streaming_workloads_report_the_call_and_a_decoding_step() {
        for (name, lo, hi) in [("blip2-opt", 0.2e9, 0.3e9), ("llava-llama", 2.0e9, 2.2e9)] {
            let w = workload(name).unwrap();
            let f = w.flops(STREAM_TOKENS);
            let per_token = f.per_token.unwrap() as f64;
            assert!((lo..hi).contains(&per_token), "{name}: {per_token}");
            assert!(f.call as f64 > STREAM_TOKENS as f64 * per_token, "{name}");
            // More tokens: more work, the same per-token order.
            assert!(w.flops(64).call > f.call);
        }
        assert!(workload("blip-caption")
            .unwrap()
            .flops(8)
            .per_token
            .is_none());
        // LLaVA: 11 of the 12 vision layers, the projector, then the language model.
        let vision = LLAVA_VISION.flops(11);
        assert_eq!(
            vision + LLAVA_VISION.encoder.layer(50),
            LLAVA_VISION.flops(12)
        );
    }

    #[test]
    fn qformer_cross_attends_in_every_second_layer() {
        let (q, d, n) = (32u64, 768u64, 197u64);
        let cross = 4 * q * d * d + 4 * n * d * d + 4 * q * n * d;
        assert_eq!(
            QFORMER.flops(197, 768),
            12 * QFORMER.encoder.layer(32) + 6 * cross
        );
    }

    #[test]
    fn rate_cells_show_the_share_of_the_peak() {
        assert_eq!(rate(10.0, 0.5), Some(20.0));
        assert_eq!(rate(10.0, 0.0), None);
        assert_eq!(rate_cell(Some(20.0), Some(80.0), false), "20.0 (25%)");
        assert_eq!(rate_cell(Some(80.0), Some(80.0), true), "80.0 (peak)");
        assert_eq!(rate_cell(Some(20.0), None, false), "20.0");
        assert_eq!(rate_cell(None, Some(80.0), false), "-");
    }

    #[test]
    fn random_pixels_are_deterministic_and_in_range() {
        let a = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let b = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
    }
}
