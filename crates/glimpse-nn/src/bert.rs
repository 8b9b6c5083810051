//! The BERT-style text transformer of BLIP ("MED", multimodal mixture of encoder-decoder),
//! after `transformers/models/blip/modeling_blip_text.py` (transformers 5.24).
//!
//! One [`BertModel`] serves the three roles BLIP gives it:
//! * unimodal text encoder: bidirectional self-attention, no encoder states (ITC);
//! * image-grounded text encoder: bidirectional, cross-attention to image states (ITM,
//!   VQA question encoder);
//! * image-grounded text decoder: causal self-attention plus cross-attention, with an
//!   LM head ([`BertLMHeadModel`]) for captioning and answers.
//!
//! The mode is an argument of `forward` ([`SelfMask`]), not a property of the weights, so
//! BLIP's pre-training can build an encoder and a decoder that share every parameter
//! except self-attention from the same kind of module.
//!
//! Decoding keeps its state in a [`BertCache`] passed by the caller: per layer a growing
//! self-attention [`KvCache`] and a cross-attention [`KvCache`] that
//! [`BertModel::new_cache`] fills once from the encoder states, so the image is projected
//! to keys/values once per image and not once per token. [`BertCache::select_rows`]
//! reorders everything (beam search).
//!
//! Layer norms and softmax take a `train` flag: candle's fused kernels record no backward.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::attention::{attend, padding_mask, split_heads, AttnMask, KvCache};
use crate::layers::{linear, Activation, LayerNorm, Linear, Module};

mod config;
pub use config::{BertConfig, TokenIds};

/// Which positions self-attention may look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfMask {
    /// Every token sees every (non-padded) token: the text encoders.
    Bidirectional,
    /// Each token sees itself and earlier tokens: the text decoder.
    Causal,
}

/// Encoder states for cross-attention, with an optional `[batch, n]` 0/1 mask.
#[derive(Debug, Clone, Copy)]
pub struct EncoderStates<'a> {
    /// `[batch, n, encoder_hidden_size]`
    pub hidden_states: &'a Tensor,
    /// `[batch, n]`, 1 = attend; `None` attends everywhere (what BLIP does for images).
    pub attention_mask: Option<&'a Tensor>,
}

fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(xs, p as f32)
    } else {
        Ok(xs.clone())
    }
}

/// Word and absolute position embeddings, then LayerNorm (BLIP's text has no token types).
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    max_positions: usize,
    dropout: f64,
}

impl BertEmbeddings {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, d, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                d,
                vb.pp("position_embeddings"),
            )?,
            layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            max_positions: cfg.max_position_embeddings,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32, sitting at positions `past_len..past_len + t`
    /// * returns `[batch, t, hidden]`
    pub fn forward(&self, input_ids: &Tensor, past_len: usize, train: bool) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        if past_len + t > self.max_positions {
            candle_core::bail!(
                "text of {} tokens exceeds max_position_embeddings = {}",
                past_len + t,
                self.max_positions
            );
        }
        let dev = input_ids.device();
        let positions = Tensor::arange(past_len as u32, (past_len + t) as u32, dev)?; // [t]
        let words = self.word_embeddings.forward(input_ids)?; // [b, t, d]
        let pos = self.position_embeddings.forward(&positions)?; // [t, d]
        let xs = words.broadcast_add(&pos)?; // [b, t, d]
        let xs = self.layer_norm.forward(&xs, train)?; // [b, t, d]
        dropout(&xs, self.dropout, train)
    }

    /// [`Self::forward`] with each row at its own positions (rows of a batch that
    /// joined at different steps); inference only.
    ///
    /// # Shapes
    /// * `input_ids`, `positions`: `[batch, t]` u32; `max_position`: the largest position
    /// * returns `[batch, t, hidden]`
    pub fn forward_at(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        max_position: u32,
    ) -> Result<Tensor> {
        if max_position as usize >= self.max_positions {
            candle_core::bail!(
                "text of {} tokens exceeds max_position_embeddings = {}",
                max_position + 1,
                self.max_positions
            );
        }
        let (b, t) = positions.dims2()?;
        let words = self.word_embeddings.forward(input_ids)?; // [b, t, d]
        let pos = self
            .position_embeddings
            .forward(&positions.flatten_all()?)? // [b * t, d]
            .reshape((b, t, ()))?; // [b, t, d]
        self.layer_norm.forward(&(words + pos)?, false)
    }
}

/// Query/key/value projections of one attention block (`attention.self` or
/// `crossattention.self`); keys and values read `encoder_hidden_size`-wide states in
/// cross-attention.
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    num_attention_heads: usize,
    attention_head_size: usize,
}

impl BertSelfAttention {
    pub fn new(cfg: &BertConfig, cross: bool, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !d.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {d} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        let kv_in = if cross { cfg.encoder_hidden_size } else { d };
        Ok(Self {
            query: linear(d, d, vb.pp("query"))?,
            key: linear(kv_in, d, vb.pp("key"))?,
            value: linear(kv_in, d, vb.pp("value"))?,
            num_attention_heads: cfg.num_attention_heads,
            attention_head_size: d / cfg.num_attention_heads,
        })
    }

    /// Keys and values of `states`.
    ///
    /// # Shapes
    /// * `states`: `[batch, n, in]` -> two `[batch, heads, n, head_dim]`
    pub fn key_value(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.num_attention_heads;
        let k = split_heads(&self.key.forward(states)?, h)?; // [b, h, n, dh]
        let v = split_heads(&self.value.forward(states)?, h)?; // [b, h, n, dh]
        Ok((k, v))
    }

    /// Attends from `xs` to the given keys/values.
    ///
    /// # Shapes
    /// * `xs`: `[batch, t, hidden]`; `k`, `v`: `[batch, heads, n, head_dim]`
    /// * returns `[batch, t, hidden]`
    pub fn attend(
        &self,
        xs: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        train: bool,
    ) -> Result<Tensor> {
        let q = self.query.forward(xs)?; // [b, t, d]
        let scale = 1.0 / (self.attention_head_size as f64).sqrt();
        let h = self.num_attention_heads;
        attend(&q, k, v, h, h, mask, scale, train) // [b, t, d]
    }
}

/// `dense`, dropout, residual, `LayerNorm`: the output of an attention block or of the
/// feed-forward (`attention.output`, `crossattention.output`, `output`).
#[derive(Debug, Clone)]
pub struct BertOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    dropout: f64,
}

impl BertOutput {
    pub fn new(cfg: &BertConfig, in_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: linear(in_dim, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// # Shapes
    /// * `xs`: `[batch, t, in]`, `residual`: `[batch, t, hidden]` -> `[batch, t, hidden]`
    pub fn forward(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            // No dropout: the residual is added inside the projection.
            return self
                .layer_norm
                .forward(&self.dense.forward_add(xs, residual)?, train);
        }
        let xs = dropout(&self.dense.forward(xs)?, self.dropout, train)?; // [b, t, d]
        self.layer_norm.forward(&(xs + residual)?, train)
    }
}

/// An attention block: projections (`self`) and output (`output`).
#[derive(Debug, Clone)]
pub struct BertAttention {
    /// Checkpoint key `self` (a Rust keyword).
    pub self_: BertSelfAttention,
    pub output: BertOutput,
}

impl BertAttention {
    pub fn new(cfg: &BertConfig, cross: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_: BertSelfAttention::new(cfg, cross, vb.pp("self"))?,
            output: BertOutput::new(cfg, cfg.hidden_size, vb.pp("output"))?,
        })
    }

    /// # Shapes
    /// * `xs`: `[batch, t, hidden]`; `k`, `v`: `[batch, heads, n, head_dim]`
    /// * returns `[batch, t, hidden]`
    pub fn forward(
        &self,
        xs: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        train: bool,
    ) -> Result<Tensor> {
        let ctx = self.self_.attend(xs, k, v, mask, train)?; // [b, t, d]
        self.output.forward(&ctx, xs, train)
    }
}

/// Cross-attention inputs of one layer: the encoder's keys/values and their mask.
#[derive(Debug, Clone, Copy)]
pub struct CrossKv<'a> {
    /// `[batch, heads, n, head_dim]`
    pub k: &'a Tensor,
    /// `[batch, heads, n, head_dim]`
    pub v: &'a Tensor,
    pub mask: &'a AttnMask,
}

/// Self-attention, optional cross-attention, feed-forward.
#[derive(Debug, Clone)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub crossattention: Option<BertAttention>,
    /// `intermediate.dense`
    pub intermediate: Linear,
    pub output: BertOutput,
    act: Activation,
}

impl BertLayer {
    /// Cross-attention weights exist when `cfg.is_decoder`, as in the reference.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let crossattention = if cfg.is_decoder {
            Some(BertAttention::new(cfg, true, vb.pp("crossattention"))?)
        } else {
            None
        };
        Ok(Self {
            attention: BertAttention::new(cfg, false, vb.pp("attention"))?,
            crossattention,
            intermediate: linear(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: BertOutput::new(cfg, cfg.intermediate_size, vb.pp("output"))?,
            act: cfg.hidden_act,
        })
    }

    /// `cache`, when given, receives this call's self-attention keys/values and supplies
    /// the earlier ones.
    ///
    /// # Shapes
    /// * `xs`: `[batch, t, hidden]` -> `[batch, t, hidden]`
    pub fn forward(
        &self,
        xs: &Tensor,
        self_mask: &AttnMask,
        cache: Option<&mut KvCache>,
        cross: Option<CrossKv>,
        train: bool,
    ) -> Result<Tensor> {
        let (k, v) = self.attention.self_.key_value(xs)?; // [b, h, t, dh]
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?, // [b, h, past + t, dh]
            None => (k, v),
        };
        let mut hs = self.attention.forward(xs, &k, &v, self_mask, train)?; // [b, t, d]
        if let Some(cross) = cross {
            let Some(ca) = &self.crossattention else {
                candle_core::bail!("encoder states given to a text layer without crossattention");
            };
            hs = ca.forward(&hs, cross.k, cross.v, cross.mask, train)?; // [b, t, d]
        }
        let inter = self.intermediate.forward_act(&hs, self.act)?; // [b, t, ffn]
        self.output.forward(&inter, &hs, train) // [b, t, d]
    }
}

/// Decoding state: per layer the self-attention cache and the image's cross-attention
/// keys/values, plus the cross-attention mask.
///
/// The image keys/values are computed once per image (`[images, heads, n, head_dim]`)
/// and kept with a map from each decoding row to its image. [`BertCache::select_rows`]
/// composes that map instead of copying the image's keys/values for every beam on every
/// step; the per-row view in `cross` is rebuilt only when the map changes (expanding a
/// batch into beams), and for a single image read by the fused CPU attention it is a
/// broadcast view with no copy at all.
#[derive(Debug, Clone)]
pub struct BertCache {
    pub self_attn: Vec<KvCache>,
    /// Per layer, the cross-attention keys/values of the current rows.
    pub cross: Vec<KvCache>,
    cross_mask: AttnMask,
    /// Per layer, keys and values of each image, in the encoder's batch order.
    cross_src: Vec<Option<(Tensor, Tensor)>>,
    /// The mask of each image (`None` when it attends everywhere).
    cross_mask_src: Option<Tensor>,
    /// For each current row, the image it reads.
    row_image: Vec<u32>,
    /// `[batch, len]` f32 0/1 mask of the self-attention keys when rows of different
    /// lengths share the batch (rows that joined later are left-padded); `None` when
    /// every cached position is attended.
    pad: Option<Tensor>,
}

impl BertCache {
    /// Number of text positions already processed.
    pub fn len(&self) -> usize {
        self.self_attn.first().map(KvCache::len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The image each decoding row reads its cross-attention from.
    pub fn row_images(&self) -> &[u32] {
        &self.row_image
    }

    /// Keeps batch rows `rows` (u32 or i64, repeats allowed) in that order, in every cache
    /// and in the cross-attention mask; beam search expands and follows beams with it.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        if let Some(pad) = &self.pad {
            let pad = pad.index_select(rows, 0)?;
            // Rows that left may leave positions nobody attends to any more.
            let drop = crate::decoder::rows::leading_padding(&pad)?;
            for c in self.self_attn.iter_mut() {
                c.drop_front(drop)?;
            }
            let pad = pad.narrow(1, drop, pad.dim(1)? - drop)?.contiguous()?;
            self.pad = (!crate::decoder::rows::all_attended(&pad)?).then_some(pad);
        }
        if self.cross_src.iter().all(Option::is_none) && self.cross_mask_src.is_none() {
            // No image: only the text caches follow the rows.
            for c in self.self_attn.iter_mut() {
                c.select_rows(rows)?;
            }
            return Ok(());
        }
        let picked = rows.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let mut map = Vec::with_capacity(picked.len());
        for &r in &picked {
            match self.row_image.get(r as usize) {
                Some(&image) => map.push(image),
                None => candle_core::bail!(
                    "select_rows: row {r} of a cache with {} rows",
                    self.row_image.len()
                ),
            }
        }
        for c in self.self_attn.iter_mut() {
            c.select_rows(rows)?;
        }
        if map != self.row_image {
            self.row_image = map;
            self.rebuild_cross()?;
        }
        Ok(())
    }

    /// Rows in the batch.
    fn rows(&self) -> Result<usize> {
        match self.self_attn.first().and_then(KvCache::get) {
            Some((k, _)) => k.dim(0),
            None => Ok(self.row_image.len()),
        }
    }

    /// Puts `other`'s rows (with their images) after this cache's rows: sequences that
    /// join a running batch. The shorter side's self-attention keys are left-padded and
    /// masked, so every row keeps the positions and logits it has alone. Images that no
    /// row reads any more are dropped here.
    pub fn join(&mut self, other: BertCache) -> Result<()> {
        if self.self_attn.len() != other.self_attn.len() {
            candle_core::bail!(
                "cannot join a cache of {} layers to one of {}",
                other.self_attn.len(),
                self.self_attn.len()
            );
        }
        let (ra, rb) = (self.rows()?, other.rows()?);
        if rb == 0 {
            return Ok(());
        }
        if ra == 0 {
            *self = other;
            return Ok(());
        }
        let with_images = |c: &BertCache| c.cross_src.iter().any(Option::is_some);
        if with_images(self) != with_images(&other) {
            candle_core::bail!("cannot join rows with images to rows without");
        }
        let (la, lb) = (self.len(), other.len());
        let device = match self.self_attn.first().and_then(KvCache::get) {
            Some((k, _)) => k.device().clone(),
            None => candle_core::Device::Cpu,
        };
        self.pad = crate::decoder::rows::stack_masks(
            self.pad.as_ref(),
            (ra, la),
            other.pad.as_ref(),
            (rb, lb),
            &device,
        )?;
        for (mine, theirs) in self.self_attn.iter_mut().zip(&other.self_attn) {
            mine.stack(theirs)?;
        }
        if !with_images(self) {
            return Ok(());
        }
        self.prune_images()?;
        let offset = match self.cross_src.iter().flatten().next() {
            Some((k, _)) => k.dim(0)? as u32,
            None => 0,
        };
        for (mine, theirs) in self.cross_src.iter_mut().zip(&other.cross_src) {
            if let (Some((k, v)), Some((ok, ov))) = (mine.as_ref(), theirs) {
                *mine = Some((Tensor::cat(&[k, ok], 0)?, Tensor::cat(&[v, ov], 0)?));
            }
        }
        self.cross_mask_src = match (&self.cross_mask_src, &other.cross_mask_src) {
            (None, None) => None,
            (a, b) => {
                let like = a.as_ref().or(b.as_ref()).expect("one side has a mask");
                let fill = |m: &Option<Tensor>, images: usize| -> Result<Tensor> {
                    match m {
                        Some(m) => Ok(m.clone()),
                        None => {
                            let mut shape = like.dims().to_vec();
                            shape[0] = images;
                            Tensor::zeros(shape, like.dtype(), like.device())
                        }
                    }
                };
                let other_images = other.cross_src.iter().flatten().next();
                let other_images = match other_images {
                    Some((k, _)) => k.dim(0)?,
                    None => 0,
                };
                Some(Tensor::cat(
                    &[&fill(a, offset as usize)?, &fill(b, other_images)?],
                    0,
                )?)
            }
        };
        self.row_image
            .extend(other.row_image.iter().map(|&i| i + offset));
        self.rebuild_cross()
    }

    /// Keeps only the images some row reads, renumbering `row_image`.
    fn prune_images(&mut self) -> Result<()> {
        let mut used: Vec<u32> = self.row_image.clone();
        used.sort_unstable();
        used.dedup();
        let images = match self.cross_src.iter().flatten().next() {
            Some((k, _)) => k.dim(0)?,
            None => return Ok(()),
        };
        if used.len() == images {
            return Ok(());
        }
        let index = Tensor::new(used.as_slice(), &candle_core::Device::Cpu)?;
        for src in self.cross_src.iter_mut().flatten() {
            let idx = index.to_device(src.0.device())?;
            *src = (src.0.index_select(&idx, 0)?, src.1.index_select(&idx, 0)?);
        }
        if let Some(m) = &self.cross_mask_src {
            self.cross_mask_src = Some(m.index_select(&index.to_device(m.device())?, 0)?);
        }
        for r in self.row_image.iter_mut() {
            *r = used.binary_search(r).expect("a used image") as u32;
        }
        Ok(())
    }

    /// The per-row cross-attention view of `row_image`: the stored keys/values when the
    /// map is the identity, a broadcast of one image when every row reads the same image
    /// and the fused CPU attention will read it, otherwise a gathered copy.
    fn rebuild_cross(&mut self) -> Result<()> {
        let map = &self.row_image;
        let rows = map.len();
        let index = Tensor::new(map.as_slice(), &candle_core::Device::Cpu)?;
        let identity =
            |images: usize| images == rows && map.iter().enumerate().all(|(i, &m)| m as usize == i);
        let single = map
            .first()
            .filter(|&&f| map.iter().all(|&m| m == f))
            .copied();
        let pick = |t: &Tensor| -> Result<Tensor> {
            let images = t.dim(0)?;
            if identity(images) {
                return Ok(t.clone());
            }
            if let Some(image) = single {
                if crate::kernels::applies(t) {
                    let mut shape = t.dims().to_vec();
                    shape[0] = rows;
                    return t.narrow(0, image as usize, 1)?.broadcast_as(shape);
                }
            }
            t.index_select(&index.to_device(t.device())?, 0)
        };
        for (c, src) in self.cross.iter_mut().zip(&self.cross_src) {
            match src {
                Some((k, v)) => c.set(pick(k)?, pick(v)?),
                None => c.clear(),
            }
        }
        if let Some(m) = &self.cross_mask_src {
            self.cross_mask.additive = Some(m.index_select(&index.to_device(m.device())?, 0)?);
        }
        Ok(())
    }
}

/// Embeddings and the layer stack (`embeddings`, `encoder.layer.{i}`). BLIP's models
/// load it without the pooler; [`BertPooler`] is separate.
#[derive(Debug, Clone)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    /// `encoder.layer`
    pub layer: Vec<BertLayer>,
    encoder_hidden_size: usize,
}

impl BertModel {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let vb_l = vb.pp("encoder").pp("layer");
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(cfg, vb_l.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: BertEmbeddings::new(cfg, vb.pp("embeddings"))?,
            layer,
            encoder_hidden_size: cfg.encoder_hidden_size,
        })
    }

    fn cross_mask(&self, encoder: &EncoderStates, dtype: DType) -> Result<AttnMask> {
        let (_, _, w) = encoder.hidden_states.dims3()?;
        if w != self.encoder_hidden_size {
            candle_core::bail!(
                "encoder states are {w} wide, the text model expects encoder_hidden_size = {}",
                self.encoder_hidden_size
            );
        }
        Ok(match encoder.attention_mask {
            Some(m) => AttnMask::additive(padding_mask(m, dtype)?),
            None => AttnMask::none(),
        })
    }

    /// The full forward pass (training, encoders, scoring a whole text).
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32; `attention_mask`: `[batch, t]` 0/1 or `None`
    /// * `encoder`: states `[batch, n, encoder_hidden_size]` for cross-attention
    /// * returns `[batch, t, hidden]`
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        encoder: Option<EncoderStates>,
        mode: SelfMask,
        train: bool,
    ) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(input_ids, 0, train)?; // [b, t, d]
        let dtype = xs.dtype();
        let mut self_mask = match mode {
            SelfMask::Causal => AttnMask::causal(),
            SelfMask::Bidirectional => AttnMask::none(),
        };
        if let Some(m) = attention_mask {
            self_mask = self_mask.with_additive(padding_mask(m, dtype)?)?; // [b, 1, 1, t]
        }
        let cross_mask = match &encoder {
            Some(e) => Some(self.cross_mask(e, dtype)?),
            None => None,
        };
        for layer in &self.layer {
            // The same projection as `new_cache`, recomputed because there is no cache.
            let kv = match (&encoder, &layer.crossattention) {
                (Some(e), Some(ca)) => Some(ca.self_.key_value(e.hidden_states)?),
                (Some(_), None) => {
                    candle_core::bail!(
                        "encoder states given to a text model without crossattention"
                    )
                }
                _ => None,
            };
            let cross = match (&kv, &cross_mask) {
                (Some((k, v)), Some(mask)) => Some(CrossKv { k, v, mask }),
                _ => None,
            };
            xs = layer.forward(&xs, &self_mask, None, cross, train)?; // [b, t, d]
        }
        Ok(xs)
    }

    /// A decoding cache; with `encoder`, every layer's cross-attention keys/values are
    /// computed here, once.
    pub fn new_cache(&self, encoder: Option<EncoderStates>) -> Result<BertCache> {
        let n = self.layer.len();
        let mut cross = vec![KvCache::new(); n];
        let mut cross_src = vec![None; n];
        let mut cross_mask = AttnMask::none();
        let mut row_image = Vec::new();
        if let Some(e) = &encoder {
            cross_mask = self.cross_mask(e, e.hidden_states.dtype())?;
            row_image = (0..e.hidden_states.dim(0)? as u32).collect();
            for ((layer, c), src) in self.layer.iter().zip(cross.iter_mut()).zip(&mut cross_src) {
                let Some(ca) = &layer.crossattention else {
                    candle_core::bail!(
                        "encoder states given to a text model without crossattention"
                    );
                };
                let (k, v) = ca.self_.key_value(e.hidden_states)?; // [b, h, n, dh]
                *src = Some((k.clone(), v.clone()));
                c.set(k, v);
            }
        }
        Ok(BertCache {
            self_attn: vec![KvCache::new(); n],
            cross,
            cross_mask_src: cross_mask.additive.clone(),
            cross_mask,
            cross_src,
            row_image,
            pad: None,
        })
    }

    /// Causal forward of new tokens on top of `cache` (inference).
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32 -> `[batch, t, hidden]`
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut BertCache) -> Result<Tensor> {
        let (mut xs, self_mask) = match &cache.pad {
            None => (
                self.embeddings.forward(input_ids, cache.len(), false)?, // [b, t, d]
                AttnMask::causal(),
            ),
            Some(pad) => {
                // Rows of different lengths: per-row positions, padding masked.
                let (b, t) = input_ids.dims2()?;
                let ones = Tensor::ones((b, t), DType::F32, pad.device())?;
                let mask = Tensor::cat(&[pad, &ones], 1)?; // [b, past + t]
                let (positions, max) = crate::decoder::rows::positions(&mask, t)?;
                let xs = self.embeddings.forward_at(input_ids, &positions, max)?;
                let additive = crate::decoder::cache::causal_padding_mask(&mask, t, xs.dtype())?;
                cache.pad = Some(mask);
                (xs, AttnMask::additive(additive))
            }
        };
        let BertCache {
            self_attn,
            cross,
            cross_mask,
            ..
        } = cache;
        for ((layer, sc), cc) in self.layer.iter().zip(self_attn).zip(cross.iter()) {
            let cross = cc.get().map(|(k, v)| CrossKv {
                k,
                v,
                mask: cross_mask,
            });
            xs = layer.forward(&xs, &self_mask, Some(sc), cross, false)?; // [b, t, d]
        }
        Ok(xs)
    }
}

/// `pooler.dense` + tanh over the first token (present in `BlipModel`'s text model only).
#[derive(Debug, Clone)]
pub struct BertPooler {
    pub dense: Linear,
}

impl BertPooler {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            dense: linear(d, d, vb.pp("dense"))?,
        })
    }

    /// # Shapes
    /// * `hidden`: `[batch, t, hidden]` -> `[batch, hidden]`
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [b, d]
        self.dense.forward(&first)?.tanh()
    }
}

mod lm_head;
pub use lm_head::{BertLMHeadModel, BertLMPredictionHead};

#[cfg(test)]
mod tests;
