//! Floating-point operations per call of each workload.
//!
//! Counted from the architectures' shapes (the `*_config()` functions of `reference.py`;
//! a test checks that the numbers agree): every matrix product, a multiply-add being 2
//! FLOPs: linear layers, attention's QK^T and AV, the patch-embedding convolution (a
//! matrix product over the patches). Elementwise work (activations, biases, residuals,
//! scaling, masking), softmax, layer and RMS norms, embedding lookups and token
//! selection are ignored: they are small next to the products at these sizes. Attention
//! over a causal prompt counts the whole t × t product, as the kernels compute it (masked
//! entries included). Decoding counts what the models run with their caches: a step
//! projects only its new positions and attends over all cached ones; the image's
//! cross-attention keys and values are computed once per call; the vocabulary projection
//! runs on the last position of a step only. The count is the work the result needs:
//! where a side does more (the reference runs LLaVA's 12th vision layer, and expands
//! BLIP's image to the beams before computing its keys/values; Glimpse's BLIP-2 prefill
//! projects every prompt position onto the vocabulary), the extra is not counted and
//! shows as a lower rate.

use crate::shapes::{linear, DecoderShape, EncoderShape, QFormerShape, VitShape};
use crate::workload::{
    StreamModel, Task, Workload, BLIP2_TEXT_IDS, CAPTION_TOKENS, CLIP_TEXT_BATCH, CLIP_TEXT_LEN,
    LLAVA_IDS_AFTER, LLAVA_IDS_BEFORE, MATMUL_COUNT, MATMUL_N,
};

/// Floating-point operations (a multiply-add is 2) of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flops {
    /// One timed call.
    pub call: u64,
    /// Streaming workloads: one decoding step, the mean over the steps after the first
    /// token (their attention grows with the context).
    pub per_token: Option<u64>,
}

impl From<u64> for Flops {
    fn from(call: u64) -> Self {
        Self {
            call,
            per_token: None,
        }
    }
}

/// The benchmark architectures, as `reference.py`'s `clip_config()`, `blip_config()`,
/// `blip2_config()` and `llava_config()` write them.
pub(crate) const VIT_B: EncoderShape = EncoderShape {
    hidden: 768,
    mlp: 3072,
    layers: 12,
};
/// CLIP ViT-B/32 at 224 px: 49 patches + class token.
pub(crate) const CLIP_VISION: VitShape = VitShape {
    image_size: 224,
    patch_size: 32,
    encoder: VIT_B,
};
pub(crate) const CLIP_TEXT: EncoderShape = EncoderShape {
    hidden: 512,
    mlp: 2048,
    layers: 12,
};
pub(crate) const CLIP_PROJECTION: usize = 512;
/// BLIP base captioning: ViT-B/16 at 384 px (577 tokens), BERT-base decoder.
pub(crate) const BLIP_VISION: VitShape = VitShape {
    image_size: 384,
    patch_size: 16,
    encoder: VIT_B,
};
pub(crate) const BLIP_TEXT: DecoderShape = DecoderShape {
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
pub(crate) const BLIP2_VISION: VitShape = VitShape {
    image_size: 224,
    patch_size: 16,
    encoder: VIT_B,
};
pub(crate) const QFORMER: QFormerShape = QFormerShape {
    encoder: VIT_B,
    queries: 32,
    cross_every: 2,
};
pub(crate) const OPT: DecoderShape = DecoderShape {
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
pub(crate) const LLAVA_VISION: VitShape = CLIP_VISION;
pub(crate) const LLAVA_VISION_LAYERS: usize = 11;
pub(crate) const LLAMA: DecoderShape = DecoderShape {
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
    pub fn flops(&self, new_tokens: usize) -> Flops {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{workload, MATMUL, STREAM_TOKENS, WORKLOADS};

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
}
