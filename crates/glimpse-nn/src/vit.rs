//! The vision transformer (ViT, <https://arxiv.org/abs/2010.11929>) behind the CLIP, BLIP
//! and BLIP-2 image encoders, and the pre-norm transformer [`Encoder`] that CLIP's text
//! tower shares with it.
//!
//! The families compute the same thing but store it differently, so [`VitLayout`] picks
//! the parameter names (reference: `transformers` `models/clip/modeling_clip.py`,
//! `models/blip/modeling_blip.py`, `models/blip_2/modeling_blip_2.py`):
//!
//! | | CLIP | BLIP / BLIP-2 |
//! |---|---|---|
//! | patch conv | no bias | bias |
//! | `class_embedding` | `[D]` | `[1, 1, D]` |
//! | positions | `position_embedding.weight` `[N+1, D]` | `position_embedding` `[1, N+1, D]` |
//! | before the encoder | `pre_layrnorm` (sic) | nothing |
//! | attention | `q_proj`, `k_proj`, `v_proj`, `out_proj` | `qkv`, `projection` |
//! | `post_layernorm` | on the pooled CLS only | on every token, then again on the CLS |
//!
//! BLIP-2 may store the fused bias as `qkv.bias` or, in older revisions, as
//! `q_bias`/`v_bias` (the key part is zero); both load.

pub mod encoder;

pub use encoder::{Encoder, EncoderConfig, EncoderLayer, Mlp, SelfAttention};

use candle_core::{bail, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::attention::AttnMask;
use crate::kernels;
use crate::layers::{layer_norm, Activation, LayerNorm};

/// Which family's parameter names and norm placement to use (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitLayout {
    Clip,
    Blip,
}

/// The shape of a vision transformer; model configs convert into it.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub layout: VitLayout,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Whether the fused `qkv` projection has a bias (BLIP-2's `qkv_bias`; BLIP: true).
    /// Ignored by the CLIP layout, whose projections always have one.
    pub qkv_bias: bool,
}

impl VitConfig {
    /// Patches per image, plus one for the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// Patch, class and position embeddings.
#[derive(Debug, Clone)]
pub struct VitEmbeddings {
    pub patch_embedding: Conv2d,
    /// `[D]` (CLIP) or `[1, 1, D]` (BLIP), as stored.
    pub class_embedding: Tensor,
    /// `[N+1, D]` whichever way it is stored.
    pub position_embedding: Tensor,
    pub image_size: usize,
}

impl VitEmbeddings {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (c, d, p) = (cfg.num_channels, cfg.hidden_size, cfg.patch_size);
        if p == 0 || !cfg.image_size.is_multiple_of(p) {
            bail!(
                "image_size {} is not a multiple of patch_size {p}",
                cfg.image_size
            )
        }
        let conv = Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let n = cfg.num_positions();
        let (patch_embedding, class_embedding, position_embedding) = match cfg.layout {
            VitLayout::Clip => (
                candle_nn::conv2d_no_bias(c, d, p, conv, vb.pp("patch_embedding"))?,
                vb.get_with_hints(d, "class_embedding", init)?,
                vb.get_with_hints((n, d), "position_embedding.weight", init)?,
            ),
            VitLayout::Blip => (
                candle_nn::conv2d(c, d, p, conv, vb.pp("patch_embedding"))?,
                vb.get_with_hints((1, 1, d), "class_embedding", init)?,
                vb.get_with_hints((1, n, d), "position_embedding", init)?
                    .squeeze(0)?,
            ),
        };
        Ok(Self {
            patch_embedding,
            class_embedding,
            position_embedding,
            image_size: cfg.image_size,
        })
    }

    /// # Shapes
    /// * `pixel_values`: `[batch, channels, image_size, image_size]`
    /// * returns `[batch, N+1, hidden]`, the class token first
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = pixel_values.dims4()?;
        if h != self.image_size || w != self.image_size {
            bail!(
                "pixel_values are {h}x{w} but the model takes {s}x{s} images",
                s = self.image_size
            )
        }
        let dtype = self.position_embedding.dtype();
        let pixel_values = pixel_values.to_dtype(dtype)?;
        let patches = match self.patch_rows(&pixel_values)? {
            Some(patches) => patches, // [b, g*g, d]
            None => {
                let patches = pixel_values.apply(&self.patch_embedding)?; // [b, d, g, g]
                patches.flatten_from(2)?.transpose(1, 2)? // [b, g*g, d]
            }
        };
        let d = patches.dim(2)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.expand((b, 1, d))?; // [b, 1, d]
        let x = Tensor::cat(&[&cls, &patches], 1)?; // [b, N+1, d]
        x.broadcast_add(&self.position_embedding) // [b, N+1, d]
    }
}

impl VitEmbeddings {
    /// The patch projection as one product over the image's patches, each flattened
    /// channel-major as the conv weight `[d, c, p, p]` is, on the fused linear kernel.
    /// candle's `conv2d` unfolds the image and multiplies through its generic path, several
    /// times slower (`examples/patch_speed.rs` compares them).
    /// `None` where the kernel does not apply (training, CUDA, half precision, kernels
    /// off) or the channels differ from the weight's (the conv path reports that).
    ///
    /// # Shapes
    /// * `x`: `[batch, channels, image_size, image_size]`
    /// * returns `[batch, (image_size / p)^2, d]`
    fn patch_rows(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let w = self.patch_embedding.weight();
        let bias = self.patch_embedding.bias();
        let applies = kernels::applies(x)
            && kernels::applies(w)
            && bias.is_none_or(kernels::applies)
            && w.is_contiguous();
        let (d, c, p, q) = w.dims4()?;
        let (b, xc, h, wd) = x.dims4()?;
        let cfg = self.patch_embedding.config();
        // One patch per output: stride p, no padding, no dilation, one group.
        let patchwise = p == q
            && p > 0
            && cfg.stride == p
            && cfg.padding == 0
            && cfg.dilation == 1
            && cfg.groups == 1
            && h % p == 0
            && wd % p == 0;
        if !applies || !patchwise || xc != c {
            return Ok(None);
        }
        let (gh, gw) = (h / p, wd / p);
        let rows = x
            .reshape((b, c, gh, p, gw, p))? // [b, c, gh, p, gw, p]
            .permute((0, 2, 4, 1, 3, 5))? // [b, gh, gw, c, p, p]
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?; // [b, patches, c*p*p]
        kernels::linear(&rows, &w.reshape((d, c * p * p))?, bias, None, None)
    }
}

/// What [`VisionTransformer::forward`] returns, named as in the reference.
#[derive(Debug, Clone)]
pub struct VitOutput {
    /// `[batch, N+1, hidden]`; `post_layernorm` applied in the BLIP layout, not in CLIP's.
    pub last_hidden_state: Tensor,
    /// `[batch, hidden]`: `post_layernorm` of the class token of `last_hidden_state`.
    pub pooler_output: Tensor,
    /// The encoder input (after `pre_layrnorm` for CLIP) and each layer's output,
    /// `num_hidden_layers + 1` tensors `[batch, N+1, hidden]`, when asked for.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// The vision tower (`vision_model` in CLIP and BLIP checkpoints).
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    pub embeddings: VitEmbeddings,
    pub pre_layrnorm: Option<LayerNorm>,
    pub encoder: Encoder,
    pub post_layernorm: LayerNorm,
    pub layout: VitLayout,
}

impl VisionTransformer {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let pre_layrnorm = match cfg.layout {
            VitLayout::Clip => Some(layer_norm(d, eps, vb.pp("pre_layrnorm"))?),
            VitLayout::Blip => None,
        };
        Ok(Self {
            embeddings: VitEmbeddings::new(cfg, vb.pp("embeddings"))?,
            pre_layrnorm,
            encoder: Encoder::new(&cfg.into(), vb.pp("encoder"))?,
            post_layernorm: layer_norm(d, eps, vb.pp("post_layernorm"))?,
            layout: cfg.layout,
        })
    }

    /// Embeddings and the optional pre-norm: the encoder's input.
    fn embed(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.embeddings.forward(pixel_values)?; // [b, N+1, d]
        match &self.pre_layrnorm {
            Some(ln) => ln.forward(&x, train),
            None => Ok(x),
        }
    }

    /// # Shapes
    /// * `pixel_values`: `[batch, channels, image_size, image_size]`
    /// * see [`VitOutput`] for the outputs
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        output_hidden_states: bool,
        train: bool,
    ) -> Result<VitOutput> {
        let x = self.embed(pixel_values, train)?; // [b, N+1, d]
        let mut hs = output_hidden_states.then(Vec::new);
        let x = self
            .encoder
            .forward(&x, &AttnMask::none(), None, hs.as_mut(), train)?; // [b, N+1, d]
        let last_hidden_state = match self.layout {
            VitLayout::Clip => x,
            VitLayout::Blip => self.post_layernorm.forward(&x, train)?,
        };
        let cls = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?; // [b, d]
        let pooler_output = self.post_layernorm.forward(&cls, train)?; // [b, d]
        Ok(VitOutput {
            last_hidden_state,
            pooler_output,
            hidden_states: hs,
        })
    }

    /// [`VitOutput::pooler_output`] alone, for inference: the last layer runs only at the
    /// class token ([`Encoder::forward_pooled`]), which is all the pooled output reads.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, channels, image_size, image_size]` -> `[batch, hidden]`
    pub fn pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.embed(pixel_values, false)?; // [b, N+1, d]
        let none = AttnMask::none();
        let cls = self
            .encoder
            .forward_pooled(&x, &none, &vec![0; x.dim(0)?], &none)?; // [b, d]
        let cls = match self.layout {
            VitLayout::Clip => cls,
            VitLayout::Blip => self.post_layernorm.forward(&cls, false)?,
        };
        self.post_layernorm.forward(&cls, false) // [b, d]
    }

    /// The reference's `hidden_states[index]` (0 is the encoder input, negative counts
    /// from the end, -1 the last layer's output before any post-norm), running only the
    /// layers needed (LLaVA takes the penultimate layer's features).
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, channels, image_size, image_size]` -> `[batch, N+1, hidden]`
    pub fn hidden_state(&self, pixel_values: &Tensor, index: i64, train: bool) -> Result<Tensor> {
        let n = self.encoder.layers.len() as i64;
        let layer = if index < 0 { n + 1 + index } else { index };
        if !(0..=n).contains(&layer) {
            bail!("hidden state {index} does not exist in a {n}-layer vision transformer")
        }
        let x = self.embed(pixel_values, train)?; // [b, N+1, d]
        self.encoder
            .forward(&x, &AttnMask::none(), Some(layer as usize), None, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use std::collections::HashMap;

    fn config(layout: VitLayout) -> VitConfig {
        VitConfig {
            layout,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 8,
            patch_size: 4,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            qkv_bias: true,
        }
    }

    fn pixels(b: usize) -> Tensor {
        Tensor::arange(0f32, (b * 3 * 64) as f32, &Device::Cpu)
            .and_then(|t| (t * 0.37)?.sin()?.reshape((b, 3, 8, 8)))
            .unwrap()
    }

    #[test]
    fn outputs_have_reference_shapes_and_hidden_states_agree() {
        for layout in [VitLayout::Clip, VitLayout::Blip] {
            let cfg = config(layout);
            let vm = VarMap::new();
            let vit = VisionTransformer::new(
                &cfg,
                VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let out = vit.forward(&pixels(2), true, false).unwrap();
            assert_eq!(out.last_hidden_state.dims(), &[2, 5, 16]);
            assert_eq!(out.pooler_output.dims(), &[2, 16]);
            let hs = out.hidden_states.unwrap();
            assert_eq!(hs.len(), 3);
            let penultimate = vit.hidden_state(&pixels(2), -2, false).unwrap();
            assert!(max_diff(&penultimate, &hs[1]) < 1e-6);
            let last = vit.hidden_state(&pixels(2), 2, false).unwrap();
            assert!(max_diff(&last, &hs[2]) < 1e-6);
            assert!(vit.hidden_state(&pixels(2), 3, false).is_err());
            assert!(vit.hidden_state(&pixels(2), -4, false).is_err());
        }
    }

    #[test]
    fn patch_rows_match_the_conv_and_step_aside_where_they_do_not_apply() {
        use crate::test_util::rand;
        let (c, d, p) = (3, 20, 4);
        let x = rand(&[2, c, 12, 12], 1);
        let w = rand(&[d, c, p, p], 2);
        let conv = Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        let embeddings = |w: &Tensor, bias: Option<Tensor>, conv| VitEmbeddings {
            patch_embedding: Conv2d::new(w.clone(), bias, conv),
            class_embedding: Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap(),
            position_embedding: Tensor::zeros((10, d), DType::F32, &Device::Cpu).unwrap(),
            image_size: 12,
        };
        for bias in [None, Some(rand(&[d], 3))] {
            let e = embeddings(&w, bias, conv);
            let want = x.apply(&e.patch_embedding).unwrap(); // [b, d, 3, 3]
            let want = want.flatten_from(2).unwrap().transpose(1, 2).unwrap();
            let got = e.patch_rows(&x).unwrap().expect("the kernel applies");
            assert!(max_diff(&want, &got) < 1e-5);
        }
        // Overlapping patches, a tracked weight (training) and a channel mismatch go
        // to the conv.
        let overlapping = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        assert!(embeddings(&w, None, overlapping)
            .patch_rows(&x)
            .unwrap()
            .is_none());
        let var = Var::from_tensor(&w).unwrap();
        assert!(embeddings(var.as_tensor(), None, conv)
            .patch_rows(&x)
            .unwrap()
            .is_none());
        let gray = rand(&[2, 1, 12, 12], 4);
        assert!(embeddings(&w, None, conv)
            .patch_rows(&gray)
            .unwrap()
            .is_none());
    }

    #[test]
    fn wrong_image_size_is_an_error_not_a_panic() {
        let vm = VarMap::new();
        let vit = VisionTransformer::new(
            &config(VitLayout::Clip),
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let big = Tensor::zeros((1, 3, 12, 12), DType::F32, &Device::Cpu).unwrap();
        let err = vit.forward(&big, false, false).unwrap_err().to_string();
        assert!(err.contains("12x12"), "{err}");
    }

    #[test]
    fn fused_and_separate_attention_agree_and_old_blip2_bias_loads() {
        let dev = Device::Cpu;
        let cfg: EncoderConfig = (&config(VitLayout::Clip)).into();
        let vm = VarMap::new();
        let sep = SelfAttention::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let data = vm.data().lock().unwrap();
        let get = |k: &str| data[k].as_tensor().clone();
        let cat = |s: &str| {
            Tensor::cat(
                &[
                    get(&format!("q_proj.{s}")),
                    get(&format!("k_proj.{s}")),
                    get(&format!("v_proj.{s}")),
                ],
                0,
            )
            .unwrap()
        };
        let mut fused: HashMap<String, Tensor> = HashMap::new();
        fused.insert("qkv.weight".into(), cat("weight"));
        fused.insert("projection.weight".into(), get("out_proj.weight"));
        fused.insert("projection.bias".into(), get("out_proj.bias"));
        let blip_cfg = EncoderConfig {
            layout: VitLayout::Blip,
            ..cfg.clone()
        };
        let x = pixels(1).reshape((1, 12, 16)).unwrap();
        let expected = sep.forward(&x, &AttnMask::none(), false).unwrap();

        let mut new_style = fused.clone();
        new_style.insert("qkv.bias".into(), cat("bias"));
        let vb = VarBuilder::from_tensors(new_style, DType::F32, &dev);
        let got = SelfAttention::new(&blip_cfg, vb)
            .unwrap()
            .forward(&x, &AttnMask::none(), false)
            .unwrap();
        assert!(max_diff(&expected, &got) < 1e-5);

        // Older BLIP-2 files: q_bias and v_bias, the key bias implicitly zero.
        let mut old_style = fused;
        old_style.insert("q_bias".into(), get("q_proj.bias"));
        old_style.insert("v_bias".into(), get("v_proj.bias"));
        let vb = VarBuilder::from_tensors(old_style, DType::F32, &dev);
        let got = SelfAttention::new(&blip_cfg, vb)
            .unwrap()
            .forward(&x, &AttnMask::none(), false)
            .unwrap();
        let k_bias_contribution = max_diff(&expected, &got);
        assert!(
            k_bias_contribution < 1e-3,
            "a key bias only shifts scores per query row"
        );
    }

    #[test]
    fn training_reaches_every_parameter() {
        for layout in [VitLayout::Clip, VitLayout::Blip] {
            let vm = VarMap::new();
            let vit = VisionTransformer::new(
                &config(layout),
                VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let out = vit.forward(&pixels(2), false, true).unwrap();
            // Fixed, uneven weights: a plain sum of squares of a layer-normed output is
            // nearly constant and would hide missing gradients.
            let w = pixels(2)
                .reshape((2, 3 * 64))
                .unwrap()
                .narrow(1, 0, 5 * 16)
                .unwrap();
            let w = w.reshape((2, 5, 16)).unwrap();
            let loss = (out.pooler_output.sum_all().unwrap()
                + (out.last_hidden_state * w).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let vars: Vec<(String, Var)> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (name, var) in vars {
                let g = grads
                    .get(&var)
                    .unwrap_or_else(|| panic!("{layout:?}: no gradient for {name}"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{layout:?}: zero gradient for {name}");
            }
        }
    }
}
