//! A check that a model's outputs are numbers. NaN or infinite weights (a diverged
//! training run, a broken conversion) otherwise reach the user as `null` in JSON, or
//! as probabilities that look like an answer.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// An error naming `model` and `what` when `values` hold a NaN or an infinity.
pub fn check_finite<'a>(
    model: &str,
    what: &str,
    values: impl IntoIterator<Item = &'a f32>,
) -> Result<()> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some((index, &value)) => Err(Error::NonFinite {
            model: model.to_string(),
            what: what.to_string(),
            value,
            index,
        }),
    }
}

/// [`check_finite`] on every element of `tensor`, in row-major order.
pub fn check_finite_tensor(model: &str, what: &str, tensor: &Tensor) -> Result<()> {
    let values = tensor
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    check_finite(model, what, &values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_outputs_are_an_error_naming_the_model() {
        assert!(check_finite("m", "probabilities", &[0.25, 0.75]).is_ok());
        let err = check_finite("m", "probabilities", &[0.5, f32::NAN])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model `m` produced NaN") && err.contains("probabilities"),
            "{err}"
        );
        let t = Tensor::new(&[[1f32, f32::INFINITY]], &candle_core::Device::Cpu).unwrap();
        let err = check_finite_tensor("m", "embeddings", &t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("produced inf"), "{err}");
    }
}
