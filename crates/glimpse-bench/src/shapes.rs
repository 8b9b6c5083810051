//! FLOP counts of the building blocks (linear layers, attention, encoders, ViT towers,
//! cached decoders, the Q-Former), from their shapes; `flops.rs` puts them together per
//! workload and explains what is counted.

/// A linear layer on `rows` positions: `2 · rows · inp · out` (the bias ignored).
pub(crate) fn linear(rows: usize, inp: usize, out: usize) -> u64 {
    2 * (rows * inp * out) as u64
}

/// Attention's two products for `q` queries over `k` keys, `width` = heads × head size:
/// `QK^T` and `AV`, `2 · q · k · width` each (keys and values shared between heads, as in
/// grouped-query attention, do not change them).
pub(crate) fn attention(q: usize, k: usize, width: usize) -> u64 {
    4 * (q * k * width) as u64
}

/// A transformer encoder (no cache): width, MLP width, layers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub mlp: usize,
    pub layers: usize,
}

impl EncoderShape {
    /// One layer over `t` tokens (`d` wide, MLP `f`): Q, K, V, O (`8·t·d²`), the MLP's
    /// two matrices (`4·t·d·f`), QK^T and AV (`4·t²·d`).
    pub fn layer(&self, t: usize) -> u64 {
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
pub(crate) struct VitShape {
    pub image_size: usize,
    pub patch_size: usize,
    pub encoder: EncoderShape,
}

impl VitShape {
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Tokens per image: the patches and the class token.
    pub fn tokens(&self) -> usize {
        self.patches() + 1
    }

    /// One image through the patch embedding and the first `layers` encoder layers: the
    /// convolution is `2·N·(3·p²)·d` (N patches of 3·p² values, `d` outputs each), then
    /// [`EncoderShape::layer`] over `N + 1` tokens per layer.
    pub fn flops(&self, layers: usize) -> u64 {
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
pub(crate) struct DecoderShape {
    pub hidden: usize,
    /// Feed-forward width.
    pub mlp: usize,
    /// A gated feed-forward (LLaMA: gate, up, down: 3 matrices; otherwise 2).
    pub gated: bool,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    /// BERT's LM head: a `hidden × hidden` transform before the vocabulary projection.
    pub head_transform: bool,
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
    pub fn step(&self, q: usize, past: usize, cross: usize) -> u64 {
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
    pub fn cross_kv(&self, n: usize, width: usize) -> u64 {
        self.layers as u64 * 2 * linear(n, width, self.hidden)
    }

    /// Generating `tokens` new tokens after a `prompt`-position prompt: the prompt in one
    /// step, then one single-position step per further token (the last token needs
    /// none), `beams` rows from the second step on (the prompt runs once and its cache is
    /// copied per beam). Returns the whole and the part after the first step.
    pub fn generate(&self, prompt: usize, tokens: usize, beams: usize, cross: usize) -> (u64, u64) {
        let decode: u64 = (1..tokens)
            .map(|j| beams as u64 * self.step(1, prompt + j - 1, cross))
            .sum();
        (self.step(prompt, 0, cross) + decode, decode)
    }
}

/// BLIP-2's Q-Former over its learned queries alone (generation passes no text).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QFormerShape {
    pub encoder: EncoderShape,
    pub queries: usize,
    /// Layers `0, k, 2k, ...` cross-attend to the image.
    pub cross_every: usize,
}

impl QFormerShape {
    /// Every layer: [`EncoderShape::layer`] over the queries; the cross-attending ones
    /// also Q and O on the queries, K and V of the `n` image tokens (`width` wide) and
    /// attention over them.
    pub fn flops(&self, n: usize, width: usize) -> u64 {
        let (q, d) = (self.queries, self.encoder.hidden);
        let cross = 2 * linear(q, d, d) + 2 * linear(n, width, d) + attention(q, n, d);
        let crossing = self.encoder.layers.div_ceil(self.cross_every) as u64;
        self.encoder.layers as u64 * self.encoder.layer(q) + crossing * cross
    }
}

#[cfg(test)]
mod tests {
    use crate::flops::{BLIP_TEXT, LLAMA, QFORMER};

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
    fn qformer_cross_attends_in_every_second_layer() {
        let (q, d, n) = (32u64, 768u64, 197u64);
        let cross = 4 * q * d * d + 4 * n * d * d + 4 * q * n * d;
        assert_eq!(
            QFORMER.flops(197, 768),
            12 * QFORMER.encoder.layer(32) + 6 * cross
        );
    }
}
