//! The pre-norm transformer encoder shared by the ViT towers and CLIP's text tower:
//! self-attention in either projection layout, the MLP, the layer and the stack.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{VitConfig, VitLayout};
use crate::attention::{attend, AttnMask};
use crate::layers::{layer_norm, linear, Activation, LayerNorm, Linear};

/// The shape of a transformer encoder, as taken from a [`VitConfig`] or a text config.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub layout: VitLayout,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
}

impl From<&VitConfig> for EncoderConfig {
    fn from(c: &VitConfig) -> Self {
        Self {
            layout: c.layout,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            hidden_act: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
            qkv_bias: c.qkv_bias,
        }
    }
}

/// Multi-head self-attention with either projection layout.
#[derive(Debug, Clone)]
pub enum SelfAttention {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        out_proj: Linear,
        heads: usize,
    },
    Fused {
        qkv: Linear,
        projection: Linear,
        heads: usize,
    },
}

impl SelfAttention {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        if heads == 0 || !d.is_multiple_of(heads) {
            bail!("hidden_size {d} is not a multiple of num_attention_heads {heads}")
        }
        Ok(match cfg.layout {
            VitLayout::Clip => Self::Separate {
                q_proj: linear(d, d, vb.pp("q_proj"))?,
                k_proj: linear(d, d, vb.pp("k_proj"))?,
                v_proj: linear(d, d, vb.pp("v_proj"))?,
                out_proj: linear(d, d, vb.pp("out_proj"))?,
                heads,
            },
            VitLayout::Blip => Self::Fused {
                qkv: fused_qkv(d, cfg.qkv_bias, &vb)?,
                projection: linear(d, d, vb.pp("projection"))?,
                heads,
            },
        })
    }

    /// # Shapes
    /// * `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: &Tensor, mask: &AttnMask, train: bool) -> Result<Tensor> {
        let ctx = self.context(x, mask, train)?; // [b, t, hidden]
        match self {
            Self::Separate { out_proj, .. } => ctx.apply(out_proj),
            Self::Fused { projection, .. } => ctx.apply(projection),
        }
    }

    /// `residual + forward(x)`, with the addition fused into the output projection for
    /// inference.
    pub fn forward_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        mask: &AttnMask,
        train: bool,
    ) -> Result<Tensor> {
        let ctx = self.context(x, mask, train)?; // [b, t, hidden]
        match self {
            Self::Separate { out_proj, .. } => out_proj.forward_add(&ctx, residual),
            Self::Fused { projection, .. } => projection.forward_add(&ctx, residual),
        }
    }

    /// [`SelfAttention::forward_add`] for one query per sequence: `residual + attn` at
    /// position `rows[b]` of each sequence `b`, the keys and values taken from all of
    /// `x`. `mask` applies to that one query (`[batch, 1, 1, seq]` at most). For
    /// inference (no backward pass).
    ///
    /// # Shapes
    /// * `x`: `[batch, seq, hidden]`, `rows`: `[batch]` flat row indices into
    ///   `[batch * seq]` (u32), `residual`: `[batch, 1, hidden]` -> `[batch, 1, hidden]`
    pub fn forward_add_rows(
        &self,
        x: &Tensor,
        rows: &Tensor,
        residual: &Tensor,
        mask: &AttnMask,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let pick = |y: &Tensor| -> Result<Tensor> {
            let w = y.dim(2)?;
            y.reshape((b * t, w))?
                .index_select(rows, 0)?
                .reshape((b, 1, w))
        };
        let (q, k, v, heads, out) = match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
                out_proj,
                heads,
            } => {
                let q = pick(x)?.apply(q_proj)?; // [b, 1, d]
                (q, x.apply(k_proj)?, x.apply(v_proj)?, *heads, out_proj)
            }
            Self::Fused {
                qkv,
                projection,
                heads,
            } => {
                let mixed = x.apply(qkv)?; // [b, t, 3d]
                let q = pick(&mixed.narrow(2, 0, d)?.contiguous()?)?; // [b, 1, d]
                let k = mixed.narrow(2, d, d)?;
                let v = mixed.narrow(2, 2 * d, d)?;
                (q, k, v, *heads, projection)
            }
        };
        let scale = ((d / heads) as f64).powf(-0.5);
        let ctx = attend(&q, &k, &v, heads, heads, mask, scale, false)?; // [b, 1, d]
        out.forward_add(&ctx, residual)
    }

    /// The attention output before the output projection, heads merged.
    fn context(&self, x: &Tensor, mask: &AttnMask, train: bool) -> Result<Tensor> {
        let (q, k, v, heads) = match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
                heads,
                ..
            } => (x.apply(q_proj)?, x.apply(k_proj)?, x.apply(v_proj)?, *heads),
            Self::Fused { qkv, heads, .. } => {
                let mixed = x.apply(qkv)?; // [b, t, 3 * hidden]
                let d = mixed.dim(2)? / 3;
                let q = mixed.narrow(2, 0, d)?; // [b, t, hidden]
                let k = mixed.narrow(2, d, d)?;
                let v = mixed.narrow(2, 2 * d, d)?;
                (q, k, v, *heads)
            }
        };
        let head_dim = q.dim(2)? / heads;
        let scale = (head_dim as f64).powf(-0.5);
        attend(&q, &k, &v, heads, heads, mask, scale, train) // [b, t, hidden]
    }
}

/// The fused `[3D, D]` projection; its bias is `qkv.bias`, or `cat(q_bias, 0, v_bias)`
/// in older BLIP-2 checkpoints, or absent when `bias` is false.
fn fused_qkv(d: usize, bias: bool, vb: &VarBuilder) -> Result<Linear> {
    // `get` alone would initialise a fresh (VarMap) weight to zeros, which never trains.
    let weight = vb.get_with_hints(
        (3 * d, d),
        "qkv.weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = if !bias {
        None
    } else if !vb.contains_tensor("qkv.bias") && vb.contains_tensor("q_bias") {
        let q = vb.get(d, "q_bias")?;
        let v = vb.get(d, "v_bias")?;
        Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
    } else {
        Some(vb.get_with_hints(3 * d, "qkv.bias", Init::Const(0.0))?)
    };
    Ok(Linear::new(weight, bias))
}

/// `fc1` -> activation -> `fc2`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Activation,
}

impl Mlp {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    /// # Shapes
    /// * `x`: `[..., hidden]` -> `[..., hidden]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward_act(x, self.act)?; // [..., intermediate]
        h.apply(&self.fc2) // [..., hidden]
    }

    /// `residual + forward(x)`, the addition fused into `fc2` for inference.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward_act(x, self.act)?; // [..., intermediate]
        self.fc2.forward_add(&h, residual) // [..., hidden]
    }
}

/// A pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub self_attn: SelfAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
        })
    }

    /// # Shapes
    /// * `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: &Tensor, mask: &AttnMask, train: bool) -> Result<Tensor> {
        let h = self.layer_norm1.forward(x, train)?; // [b, t, d]
        let x = self.self_attn.forward_add(&h, x, mask, train)?; // x + attn(h), [b, t, d]
        let h = self.layer_norm2.forward(&x, train)?; // [b, t, d]
        self.mlp.forward_add(&h, &x) // x + mlp(h), [b, t, d]
    }
}

impl EncoderLayer {
    /// [`EncoderLayer::forward`] for one position per sequence, `rows[b]` of sequence
    /// `b` (a flat index into `[batch * seq]`): the keys and values still come from
    /// every position, but the query, the output projection and the MLP run on those
    /// rows alone. `mask` applies to the single query. For inference.
    ///
    /// # Shapes
    /// * `x`: `[batch, seq, hidden]`, `rows`: `[batch]` (u32) -> `[batch, 1, hidden]`
    pub fn forward_rows(&self, x: &Tensor, rows: &Tensor, mask: &AttnMask) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = self.layer_norm1.forward(x, false)?; // [b, t, d]
        let picked = x
            .reshape((b * t, d))?
            .index_select(rows, 0)?
            .reshape((b, 1, d))?;
        let y = self.self_attn.forward_add_rows(&h, rows, &picked, mask)?; // [b, 1, d]
        let h = self.layer_norm2.forward(&y, false)?;
        self.mlp.forward_add(&h, &y) // [b, 1, d]
    }
}

/// A stack of [`EncoderLayer`]s stored as `layers.{i}`.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Runs the first `n_layers` layers (all when `None`). With `hidden_states`, pushes
    /// the input and each layer's output, as the reference's `hidden_states` tuple.
    ///
    /// # Shapes
    /// * `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        n_layers: Option<usize>,
        mut hidden_states: Option<&mut Vec<Tensor>>,
        train: bool,
    ) -> Result<Tensor> {
        let n = n_layers.unwrap_or(self.layers.len()).min(self.layers.len());
        let mut x = x.clone();
        if let Some(hs) = hidden_states.as_deref_mut() {
            hs.push(x.clone());
        }
        for layer in &self.layers[..n] {
            x = layer.forward(&x, mask, train)?; // [b, t, d]
            if let Some(hs) = hidden_states.as_deref_mut() {
                hs.push(x.clone());
            }
        }
        Ok(x)
    }

    /// The last layer's output at one position per sequence, for inference: every layer
    /// but the last as in [`Encoder::forward`] (with `mask`), then the last through
    /// [`EncoderLayer::forward_rows`] (with `row_mask`, the mask of that one query).
    /// Pooled outputs (CLIP's class token, its text tower's end token) need no more,
    /// and the last layer's other positions cost about a twelfth of the encoder.
    ///
    /// # Shapes
    /// * `x`: `[batch, seq, hidden]`, `positions`: `batch` positions -> `[batch, hidden]`
    pub fn forward_pooled(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        positions: &[usize],
        row_mask: &AttnMask,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        if positions.len() != b {
            bail!("{} pooling positions for a batch of {b}", positions.len())
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= t) {
            bail!("pooling position {p} is past the sequence of {t}")
        }
        let Some((last, rest)) = self.layers.split_last() else {
            let rows: Vec<Tensor> = (0..b)
                .map(|i| x.narrow(0, i, 1)?.narrow(1, positions[i], 1))
                .collect::<Result<_>>()?;
            return Tensor::cat(&rows, 0)?.reshape((b, d));
        };
        let mut x = x.clone();
        for layer in rest {
            x = layer.forward(&x, mask, false)?; // [b, t, d]
        }
        let rows: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * t + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b, x.device())?;
        last.forward_rows(&x, &rows, row_mask)?.reshape((b, d))
    }
}
