//! Trainable parameters: a [`VarMap`] whose names are the checkpoint names, a
//! VarBuilder backend that lets two modules share variables under different names
//! (BLIP's text decoder and encoder), deterministic initialisation, and export of a
//! model's tensors under the names an inference model asks for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::Result;
use glimpse_data::rng::SplitMix64 as Rng;

/// How a requested name maps to the stored variable (identity for most models).
pub type Rename = fn(&str) -> String;

/// A VarBuilder backend over a [`VarMap`] that renames every request first, so
/// modules built under different prefixes can share one variable.
#[derive(Clone)]
pub struct SharedVars {
    pub map: VarMap,
    rename: Rename,
}

impl SharedVars {
    pub fn new(map: VarMap, rename: Rename) -> Self {
        Self { map, rename }
    }

    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        self.var_builder_dtype(DType::F32, device)
    }

    /// Variables of `dtype`: training runs in f32; the gradient-parity tests build
    /// f64 models to compare with float64 references at float64 precision.
    pub fn var_builder_dtype(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

impl SimpleBackend for SharedVars {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.map.get(s, &(self.rename)(name), h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().unwrap();
        match data.get(&(self.rename)(name)) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .unwrap()
            .contains_key(&(self.rename)(name))
    }
}

/// A backend that serves tensors of an existing map (renamed) and records every
/// name asked for: building an inference model on it yields exactly the tensors, under
/// exactly the names, that model loads. Asking for an unknown name is an error.
#[derive(Clone)]
pub struct Recorder {
    source: SharedVars,
    pub recorded: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl Recorder {
    pub fn new(source: SharedVars) -> Self {
        Self {
            source,
            recorded: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    pub fn take(&self) -> BTreeMap<String, Tensor> {
        std::mem::take(&mut *self.recorded.lock().unwrap())
    }
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        _: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.source.get_unchecked(name, DType::F32, &Device::Cpu)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: stored {:?}, the model expects {s:?}", t.shape());
        }
        let t = t.detach().to_device(&Device::Cpu)?;
        self.recorded
            .lock()
            .unwrap()
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.source.get_unchecked(name, d, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.contains_tensor(name)
    }
}

/// Every variable of `map`, sorted by name (the optimizer's fixed order).
pub fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// 2-D sine-cosine position embeddings (as MAE initialises its ViT): row 0 (the class
/// token) zero, then a `g x g` grid whose first half of the dimensions encodes the
/// row and the second half the column.
///
/// # Shapes
/// * returns `[g * g + 1, d]` values, row-major
pub fn sincos_2d(g: usize, d: usize) -> Vec<f32> {
    let quarter = (d / 4).max(1);
    let mut out = vec![0f32; (g * g + 1) * d];
    for r in 0..g {
        for c in 0..g {
            let row = &mut out[(1 + r * g + c) * d..(2 + r * g + c) * d];
            for (half, pos) in [(0usize, r as f64), (1, c as f64)] {
                for i in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    let base = half * 2 * quarter;
                    if base + i < d {
                        row[base + i] = (pos * omega).sin() as f32;
                    }
                    if base + quarter + i < d {
                        row[base + quarter + i] = (pos * omega).cos() as f32;
                    }
                }
            }
        }
    }
    out
}

/// Initial values, drawn in name order from `seed`: norm weights 1, biases 0, the
/// temperatures at their conventional values (`temp` 0.07, `logit_scale` ln(1/0.07)),
/// the vision tower's position embeddings 2-D sine-cosine (with random ones a small
/// ViT trained from scratch takes very long to relate neighbouring patches: colours
/// are learned early, shapes and positions were not learned at all in the first
/// synthetic-world runs) times `position_scale`, everything else N(0, `std`)
/// (BERT/BLIP's `initializer_range`).
pub fn init_weights(map: &VarMap, seed: u64, std: f64, position_scale: f32) -> Result<()> {
    let mut rng = Rng::new(seed);
    for (name, var) in sorted_vars(map) {
        let shape = var.shape().clone();
        let leaf = name.rsplit('.').next().unwrap_or(&name);
        let lower = name.to_lowercase();
        let is_norm = lower.contains("norm") || lower.contains("layrnorm");
        let value = if name == "temp" {
            Tensor::full(0.07f32, shape, var.device())?
        } else if leaf == "logit_scale" {
            Tensor::full((1.0f32 / 0.07).ln(), shape, var.device())?
        } else if name.starts_with("vision_model.") && name.contains("position_embedding") && {
            let rows = shape.dims()[shape.rank() - 2];
            let g = ((rows - 1) as f64).sqrt().round() as usize;
            g * g + 1 == rows
        } {
            let dims = shape.dims();
            let (rows, d) = (dims[shape.rank() - 2], dims[shape.rank() - 1]);
            let g = ((rows - 1) as f64).sqrt().round() as usize;
            let values = sincos_2d(g, d).into_iter().map(|v| v * position_scale);
            Tensor::from_vec(values.collect::<Vec<f32>>(), shape, var.device())?
        } else if is_norm && leaf == "weight" {
            Tensor::ones(shape, DType::F32, var.device())?
        } else if leaf == "bias" {
            Tensor::zeros(shape, DType::F32, var.device())?
        } else {
            let n = shape.elem_count();
            let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            Tensor::from_vec(data, shape, var.device())?
        };
        var.set(&value)?;
    }
    Ok(())
}

/// Copies `tensors` into the variables of `map` with the same names; every variable
/// must be present with its shape, and every tensor must be used.
pub fn load_into(map: &VarMap, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
    let vars = sorted_vars(map);
    for (name, var) in &vars {
        let t = tensors
            .get(name)
            .ok_or_else(|| crate::Error::Train(format!("{origin}: missing tensor {name}")))?;
        if t.shape() != var.shape() {
            return Err(crate::Error::Train(format!(
                "{origin}: {name} is {:?}, the model expects {:?}",
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    if tensors.len() != vars.len() {
        let known: std::collections::HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        extra.sort();
        return Err(crate::Error::Train(format!(
            "{origin}: tensors the model does not have: {extra:?}"
        )));
    }
    Ok(())
}

/// Sets the variables of `map` that `tensors` names and returns how many; a tensor
/// the model does not have, or one of the wrong shape, is an error.
pub fn load_some(map: &VarMap, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<usize> {
    let vars: HashMap<String, candle_core::Var> = sorted_vars(map).into_iter().collect();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let unknown: Vec<&&String> = names.iter().filter(|n| !vars.contains_key(**n)).collect();
    if !unknown.is_empty() {
        return Err(crate::Error::Train(format!(
            "{origin}: tensors the model does not have: {unknown:?}"
        )));
    }
    for name in &names {
        let (t, var) = (&tensors[*name], &vars[*name]);
        if t.shape() != var.shape() {
            return Err(crate::Error::Train(format!(
                "{origin}: {name} is {:?}, the model expects {:?}",
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(names.len())
}

/// The current values of `map` (detached), by name.
pub fn snapshot(map: &VarMap) -> HashMap<String, Tensor> {
    sorted_vars(map)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{init_weights, sincos_2d};
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarMap};

    /// The position table is the sine-cosine grid times the scale; the other draws
    /// do not depend on it.
    #[test]
    fn position_init_scale_scales_only_the_position_table() {
        let (g, d) = (3, 8);
        let table = |scale: f32| {
            let map = VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
            let pos = vb
                .get_with_hints(
                    (g * g + 1, d),
                    "vision_model.embeddings.position_embedding.weight",
                    Init::Const(0.0),
                )
                .unwrap();
            let w = vb
                .get_with_hints((4, 4), "vision_model.w", Init::Const(0.0))
                .unwrap();
            init_weights(&map, 7, 0.02, scale).unwrap();
            (
                pos.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (one, w1) = table(1.0);
        let (quarter, w4) = table(0.25);
        assert_eq!(one, sincos_2d(g, d));
        let want: Vec<f32> = one.iter().map(|v| v * 0.25).collect();
        assert_eq!(quarter, want);
        assert_eq!(w1, w4);
    }

    #[test]
    fn sincos_grid_is_distinct_per_position() {
        let (g, d) = (4, 16);
        let v = sincos_2d(g, d);
        assert!(v[..d].iter().all(|&x| x == 0.0), "class token row is zero");
        let rows: Vec<&[f32]> = v.chunks(d).skip(1).collect();
        for i in 0..rows.len() {
            for j in 0..i {
                let dist: f32 = rows[i]
                    .iter()
                    .zip(rows[j])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum();
                assert!(dist > 1e-3, "positions {i} and {j} coincide");
            }
        }
    }
}
