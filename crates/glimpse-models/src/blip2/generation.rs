//! `Blip2ForConditionalGeneration`: image -> Q-Former queries -> `language_projection`
//! -> a soft visual prompt for a frozen language model (OPT or Flan-T5).
//!
//! The visual prompt enters the language model through its input embeddings. Following
//! the reference (5.24), the processor puts `image_token_index` x `num_query_tokens`
//! placeholders before the tokenized prompt and the projected queries replace the
//! embeddings at those positions; configs without `image_token_index` (written before
//! that convention) get the queries prepended instead. OPT reads the result as its
//! whole input; T5 encodes it and decodes from `decoder_start_token_id`.
//!
//! Decoding lives in `decode.rs` ([`super::Blip2Cache`] and the `Decoder` impl).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_nn::layers::{linear, Linear, Module};
use glimpse_nn::opt::OptForCausalLM;
use glimpse_nn::quant::{Quant, QuantReport};
use glimpse_nn::t5::T5ForConditionalGeneration;

use super::config::{Blip2Config, Blip2TextConfig};
use super::qformer::Blip2QFormerModel;
use super::vision::Blip2VisionModel;
use crate::checkpoint::{ModelFiles, Weights};
use crate::{Error, Result};

/// The language model (`language_model.*`).
#[derive(Debug, Clone)]
pub enum LanguageModel {
    Opt(OptForCausalLM),
    T5(T5ForConditionalGeneration),
}

impl LanguageModel {
    /// Token embeddings of the language model.
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32 -> `[batch, t, hidden]`
    pub fn embed_tokens(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Opt(m) => m.embed_tokens(input_ids),
            Self::T5(m) => m.embed_tokens(input_ids),
        }
    }
}

/// `vision_model`, `query_tokens`, `qformer`, `language_projection`, `language_model`.
#[derive(Debug, Clone)]
pub struct Blip2ForConditionalGeneration {
    pub vision_model: Blip2VisionModel,
    /// `[1, num_query_tokens, qformer hidden]`
    pub query_tokens: Tensor,
    pub qformer: Blip2QFormerModel,
    pub language_projection: Linear,
    pub language_model: LanguageModel,
    pub(super) config: Blip2Config,
}

impl Blip2ForConditionalGeneration {
    /// Every part in `vb`'s dtype; `vb` points at the checkpoint root.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::new_split(cfg, vb.clone(), vb)
    }

    /// `vb_qformer` (also at the root) gives `query_tokens` and `qformer.*` their own
    /// dtype: the reference keeps them in f32 when the rest is half precision.
    pub fn new_split(
        cfg: &Blip2Config,
        vb: VarBuilder,
        vb_qformer: VarBuilder,
    ) -> candle_core::Result<Self> {
        let q = cfg.qformer();
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        let query_tokens = vb_qformer.get_with_hints(
            (1, cfg.num_query_tokens, q.hidden_size),
            "query_tokens",
            init,
        )?;
        let lm_vb = vb.pp("language_model");
        let language_model = match &cfg.text_config {
            Blip2TextConfig::Opt(c) => LanguageModel::Opt(OptForCausalLM::new(c, lm_vb)?),
            Blip2TextConfig::T5(c) => {
                // Older files also store the tied per-stack copies of `shared`; read
                // them so a strict load accepts them (the model uses `shared`).
                for stack in ["encoder", "decoder"] {
                    let name = format!("{stack}.embed_tokens.weight");
                    if lm_vb.contains_tensor(&name) {
                        lm_vb.get((c.vocab_size, c.d_model), &name)?;
                    }
                }
                LanguageModel::T5(T5ForConditionalGeneration::new(c, lm_vb)?)
            }
        };
        Ok(Self {
            vision_model: Blip2VisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            query_tokens,
            qformer: Blip2QFormerModel::new(&q, vb_qformer.pp("qformer"))?,
            language_projection: linear(
                q.hidden_size,
                cfg.text_config.hidden_size(),
                vb.pp("language_projection"),
            )?,
            language_model,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory strictly, in the compute dtype that
    /// [`crate::checkpoint::memory`] picks (CPU: f32, or the stored half dtype when only
    /// that fits; elsewhere the stored dtype), except that T5 never runs in f16 (Flan-T5
    /// overflows: bf16 instead, or f32 on the CPU when it fits). Refuses, before reading any tensor,
    /// a checkpoint that does not fit the available memory.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let cfg: Blip2Config = files.read_config()?;
        let opts = crate::checkpoint::LoadOptions {
            avoid_f16: matches!(cfg.text_config, Blip2TextConfig::T5(_)),
            f32_prefixes: vec!["qformer.".into(), "query_tokens".into()],
            ..Default::default()
        };
        let (_, plan) = Weights::open_checked_with(files, device, &opts)?;
        Self::load_with_dtype(files, plan.compute_dtype, device)
    }

    /// Loads with the vision tower, projection and language model in `dtype` and the
    /// Q-Former and queries in f32, as the reference does. A missing, mis-shaped or
    /// unused tensor is an error naming it.
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: Blip2Config = files.read_config()?;
        let weights = Weights::open(files)?;
        let vb = weights.var_builder(dtype, device);
        let vb_qformer = weights.var_builder(DType::F32, device);
        let model = Self::new_split(&cfg, vb, vb_qformer)?;
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// Quantises the language model's decoder layers for inference (see
    /// [`OptForCausalLM::quantize`]); vision tower, Q-Former, projection, embeddings and
    /// head stay as loaded. OPT only: a T5 language model is an error.
    pub fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        match &mut self.language_model {
            LanguageModel::Opt(lm) => Ok(lm.quantize(quant)?),
            LanguageModel::T5(_) => Err(Error::Model {
                model: "blip-2".into(),
                msg: "quantised weights are supported for OPT language models; this \
                      checkpoint's is T5"
                    .into(),
            }),
        }
    }

    /// Vision tower output (what the queries cross-attend to).
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, 1 + patches, vision_hidden]`
    pub fn vision(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixel_values, train)?)
    }

    /// The queries after the Q-Former, in the Q-Former's dtype.
    ///
    /// # Shapes
    /// * `image_embeds`: `[batch, n, vision_hidden]` -> `[batch, Q, qformer_hidden]`
    pub fn query_outputs(&self, image_embeds: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .qformer
            .query_outputs(&self.query_tokens, image_embeds, train)?)
    }

    /// `language_projection` of the query outputs, in the language model's dtype.
    ///
    /// # Shapes
    /// * `query_outputs`: `[batch, Q, qformer_hidden]` -> `[batch, Q, lm_hidden]`
    pub fn project(&self, query_outputs: &Tensor) -> Result<Tensor> {
        let dtype = self.language_projection.dtype();
        Ok(self
            .language_projection
            .forward(&query_outputs.to_dtype(dtype)?)?)
    }

    /// The soft visual prompt: vision -> Q-Former -> projection.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, Q, lm_hidden]`
    pub fn image_prompt(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.image_prompt_train(pixel_values, false)
    }

    fn image_prompt_train(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let image = self.vision(pixel_values, train)?; // [b, n, dv]
        let queries = self.query_outputs(&image, train)?; // [b, Q, dq]
        self.project(&queries) // [b, Q, d]
    }

    /// The language model's input: token embeddings of `input_ids` with the visual
    /// prompt at the image-token positions (or, without `image_token_index`, prepended,
    /// the mask growing by `Q` ones).
    ///
    /// # Shapes
    /// * `image_prompt`: `[batch, Q, d]`; `input_ids`: `[batch, t]` u32;
    ///   `attention_mask`: `[batch, t]` 0/1
    /// * returns `([batch, t or Q + t, d], mask of the same length)`
    pub fn inputs_embeds(
        &self,
        image_prompt: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t) = input_ids.dims2()?;
        let (bi, q, d) = image_prompt.dims3()?;
        if bi != b {
            return Err(input_error(format!(
                "{bi} images for {b} rows of input_ids: give one image per row"
            )));
        }
        if let Some(m) = attention_mask {
            if m.dims() != [b, t] {
                return Err(input_error(format!(
                    "attention_mask is {:?} but input_ids is [{b}, {t}]",
                    m.dims()
                )));
            }
        }
        let text = self.language_model.embed_tokens(input_ids)?; // [b, t, d]
        let prompt = image_prompt.to_dtype(text.dtype())?;
        let Some(image_token) = self.config.image_token_index else {
            let embeds = Tensor::cat(&[&prompt, &text], 1)?; // [b, Q + t, d]
            let mask = match attention_mask {
                Some(m) => {
                    let ones = Tensor::ones((b, q), m.dtype(), m.device())?;
                    Some(Tensor::cat(&[&ones, m], 1)?) // [b, Q + t]
                }
                None => None,
            };
            return Ok((embeds, mask));
        };
        // Row-major gather from [text rows; prompt rows]: placeholder k of row r takes
        // prompt row r*Q + k, every other position keeps its token embedding.
        let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut index = Vec::with_capacity(b * t);
        for (r, row) in rows.iter().enumerate() {
            let mut k = 0;
            for (j, &id) in row.iter().enumerate() {
                if id == image_token {
                    if k < q {
                        index.push((b * t + r * q + k) as u32);
                    }
                    k += 1;
                } else {
                    index.push((r * t + j) as u32);
                }
            }
            if k != q {
                return Err(input_error(format!(
                    "row {r} of input_ids has {k} image tokens (id {image_token}) but the \
                     model has {q} queries; build the ids with `processor_ids`"
                )));
            }
        }
        let table = Tensor::cat(
            &[&text.reshape((b * t, d))?, &prompt.reshape((b * q, d))?],
            0,
        )?;
        let index = Tensor::from_vec(index, b * t, input_ids.device())?;
        let embeds = table.index_select(&index, 0)?.reshape((b, t, d))?; // [b, t, d]
        Ok((embeds, attention_mask.cloned()))
    }

    /// The reference's `forward(...).logits`. OPT: logits over the whole input
    /// sequence; T5: the encoder reads the input, the decoder `decoder_input_ids`
    /// (required) and the logits are the decoder's.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]`; `input_ids`, `attention_mask`:
    ///   `[batch, t]` (processor ids, placeholders included)
    /// * returns OPT `[batch, t (+ Q without image_token_index), vocab]`,
    ///   T5 `[batch, t_dec, vocab]`
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward(
            pixel_values,
            input_ids,
            attention_mask,
            decoder_input_ids,
            false,
        )
    }

    /// [`Self::logits`] with the `train` switch (differentiable kernels, dropout).
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let prompt = self.image_prompt_train(pixel_values, train)?; // [b, Q, d]
        let (embeds, mask) = self.inputs_embeds(&prompt, input_ids, attention_mask)?;
        match &self.language_model {
            LanguageModel::Opt(lm) => {
                let mut cache = lm.new_cache();
                Ok(lm.forward_embeds(&embeds, mask.as_ref(), &mut cache, train)?)
                // [b, t, V]
            }
            LanguageModel::T5(lm) => {
                let Some(dec) = decoder_input_ids else {
                    return Err(input_error(
                        "decoder_input_ids are required with a T5 language model".into(),
                    ));
                };
                Ok(lm.forward(&embeds, mask.as_ref(), dec, train)?) // [b, t_dec, V]
            }
        }
    }
}

pub(super) fn input_error(msg: String) -> Error {
    Error::Model {
        model: "blip-2".into(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(image_token_index: Option<u32>) -> Blip2ForConditionalGeneration {
        tiny_with_vars(image_token_index).0
    }

    fn tiny_with_vars(image_token_index: Option<u32>) -> (Blip2ForConditionalGeneration, VarMap) {
        let json = serde_json::json!({
            "num_query_tokens": 2,
            "image_token_index": image_token_index,
            "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
            "qformer_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "vocab_size": 10},
            "text_config": {"model_type": "opt", "hidden_size": 8, "ffn_dim": 16,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 12,
                            "max_position_embeddings": 16}
        });
        let cfg: Blip2Config = serde_json::from_value(json).unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        (Blip2ForConditionalGeneration::new(&cfg, vb).unwrap(), vm)
    }

    /// Deterministic, uneven values (a plain sum of a normed output hides gradients).
    fn wave(shape: &[usize], f: f64) -> Tensor {
        let n: usize = shape.iter().product();
        (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * f)
            .unwrap()
            .sin()
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn training_forward_reaches_every_parameter() {
        let (m, vm) = tiny_with_vars(Some(11));
        let ids = Tensor::new(&[[11u32, 11, 2, 5, 7]], &Device::Cpu).unwrap();
        let logits = m
            .forward(&wave(&[1, 3, 8, 8], 0.37), &ids, None, None, true)
            .unwrap(); // [1, 5, 12]
        let loss = (logits * wave(&[1, 5, 12], 0.71))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = vm.data().lock().unwrap().clone();
        for (name, var) in vars {
            if name.ends_with("key.bias") {
                // Adding a bias to every key shifts a query's scores equally: its
                // gradient is zero in the reference too.
                continue;
            }
            let g = grads.get(&var);
            let norm = g.map_or(0.0, |g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            assert!(norm > 0.0, "no gradient for {name}");
        }
    }

    #[test]
    fn placeholders_take_the_queries_in_order() {
        let m = tiny(Some(11));
        let dev = Device::Cpu;
        let prompt = Tensor::arange(0f32, 2. * 2. * 8., &dev)
            .unwrap()
            .reshape((2, 2, 8))
            .unwrap();
        let ids = Tensor::new(&[[11u32, 11, 2, 5], [3, 11, 4, 11]], &dev).unwrap();
        let (e, mask) = m.inputs_embeds(&prompt, &ids, None).unwrap();
        assert!(mask.is_none());
        let text = m.language_model.embed_tokens(&ids).unwrap();
        let row = |t: &Tensor, r: usize, j: usize| {
            t.get(r).unwrap().get(j).unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(row(&e, 0, 0), row(&prompt, 0, 0));
        assert_eq!(row(&e, 0, 1), row(&prompt, 0, 1));
        assert_eq!(row(&e, 0, 2), row(&text, 0, 2));
        assert_eq!(row(&e, 1, 0), row(&text, 1, 0));
        assert_eq!(row(&e, 1, 1), row(&prompt, 1, 0));
        assert_eq!(row(&e, 1, 3), row(&prompt, 1, 1));

        let short = Tensor::new(&[[11u32, 2, 5, 6]], &dev).unwrap();
        let one = prompt.narrow(0, 0, 1).unwrap();
        let err = m.inputs_embeds(&one, &short, None).unwrap_err().to_string();
        assert!(err.contains("1 image tokens"), "{err}");
    }

    #[test]
    fn without_image_token_index_queries_are_prepended() {
        let m = tiny(None);
        let dev = Device::Cpu;
        let prompt = Tensor::ones((1, 2, 8), DType::F32, &dev).unwrap();
        let ids = Tensor::new(&[[2u32, 5, 6]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev).unwrap();
        let (e, mask) = m.inputs_embeds(&prompt, &ids, Some(&mask)).unwrap();
        assert_eq!(e.dims(), &[1, 5, 8]);
        assert_eq!(
            mask.unwrap().to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1, 1, 0]]
        );
    }
}
