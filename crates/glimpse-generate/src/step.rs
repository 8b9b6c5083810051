//! The boundary with the model: checking the prompt, running a step, reading logits
//! back as rows of f32, and reordering cache rows. Keeping this in one place lets the
//! strategies work on plain vectors.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{GenerateError, Result};
use crate::Decoder;

/// The prompt as rows of ids, and the device new token tensors go to.
pub(crate) struct Prompt {
    pub rows: Vec<Vec<u32>>,
    pub device: Device,
}

impl Prompt {
    /// Accepts a `[batch, len]` u32 tensor with `batch >= 1` and `len >= 1`.
    pub fn read(ids: &Tensor) -> Result<Self> {
        let bad = |m: String| GenerateError::InvalidPrompt(m);
        if ids.dtype() != DType::U32 {
            return Err(bad(format!("expected u32 ids, got {:?}", ids.dtype())));
        }
        let (b, t) = ids
            .dims2()
            .map_err(|_| bad(format!("expected shape [batch, len], got {:?}", ids.dims())))?;
        if b == 0 || t == 0 {
            return Err(bad(format!(
                "expected a non-empty [batch, len], got [{b}, {t}]"
            )));
        }
        Ok(Self {
            rows: ids.to_vec2::<u32>()?,
            device: ids.device().clone(),
        })
    }
}

/// Runs one model step and returns its logits as `rows` vectors of f32.
pub(crate) fn step<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    input: &Tensor,
    rows: usize,
) -> Result<Vec<Vec<f32>>> {
    let logits = model.step(input, cache)?;
    let shape = logits.dims().to_vec();
    match shape.as_slice() {
        [r, v] if *r == rows && *v > 0 => Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?),
        _ => Err(GenerateError::BadLogits { got: shape, rows }),
    }
}

/// Feeds one new token per row.
pub(crate) fn step_tokens<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    tokens: &[u32],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let input = Tensor::from_slice(tokens, (tokens.len(), 1), device)?;
    step(model, cache, &input, tokens.len())
}

/// Keeps cache rows `rows` in that order (repeats expand a row into copies).
pub(crate) fn select_rows<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    rows: &[u32],
    device: &Device,
) -> Result<()> {
    let idx = Tensor::from_slice(rows, rows.len(), device)?;
    Ok(model.select_rows(cache, &idx)?)
}

/// Row `r` of the output draws from its own stream, so what one row samples depends
/// only on the seed and its index, not on the other rows' contents or lengths.
pub(crate) fn row_rng(seed: u64, row: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
