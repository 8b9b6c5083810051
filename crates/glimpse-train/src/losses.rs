//! Training losses: CLIP's symmetric contrastive loss, BLIP's ITC with soft
//! (momentum-distilled) targets, cross-entropy with label smoothing and ignored
//! positions (the LM loss), plain cross-entropy (ITM).
//!
//! All functions are built from differentiable candle ops and compute in f32.

use candle_core::{DType, Tensor, D};
use candle_nn::ops::log_softmax;

use crate::Result;

/// Rows scaled to unit L2 norm (`F.normalize(x, dim=-1)`, eps 1e-12).
///
/// # Shapes
/// * `x`: `[n, d]` -> `[n, d]`
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?; // [n, 1]
    Ok(x.broadcast_div(&norm)?)
}

/// `t` in the precision losses are computed in: f64 stays f64, anything else is f32.
fn loss_dtype(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F64 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    })
}

/// Mean cross-entropy of `logits` against class indices.
///
/// # Shapes
/// * `logits`: `[n, c]`, `labels`: `[n]` u32 -> scalar
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(&loss_dtype(logits)?, D::Minus1)?; // [n, c]
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?; // [n]
    Ok(picked.mean_all()?.neg()?)
}

/// Cross-entropy against soft targets: `-(log_softmax(logits) * targets).sum(1).mean()`.
///
/// # Shapes
/// * `logits`, `targets`: `[n, c]` -> scalar
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(&loss_dtype(logits)?, D::Minus1)?; // [n, c]
    Ok((logp * targets)?.sum(1)?.mean_all()?.neg()?)
}

/// Cross-entropy with label smoothing `eps` over the positions where `mask` is 1, as
/// `torch.nn.functional.cross_entropy(label_smoothing=eps, ignore_index=...)`:
/// per position `(1 - eps) * nll + eps * mean_c(-log p_c)`, averaged over kept
/// positions.
///
/// # Shapes
/// * `logits`: `[n, c]`, `labels`: `[n]` u32 (any value where masked), `mask`: `[n]`
///   f32 0/1 -> scalar
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let logp = log_softmax(&loss_dtype(logits)?, D::Minus1)?; // [n, c]
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?; // [n]
    let per = if eps > 0.0 {
        let smooth = logp.mean(1)?.neg()?; // [n]
        ((nll * (1.0 - eps))? + (smooth * eps)?)?
    } else {
        nll
    };
    let mask = mask.to_dtype(per.dtype())?; // [n]
    let kept = mask.sum_all()?; // []
    Ok((per * mask)?.sum_all()?.div(&kept.clamp(1.0, f64::MAX)?)?)
}

/// The language-model loss of a decoder: position `t` predicts token `t + 1`;
/// positions whose target is padding (mask 0) are ignored.
///
/// # Shapes
/// * `logits`: `[b, t, v]`, `input_ids`: `[b, t]` u32, `attention_mask`: `[b, t]` 0/1
/// * returns a scalar
pub fn lm_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    label_smoothing: f64,
) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let pred = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?; // [b(t-1), v]
    let labels = input_ids.narrow(1, 1, t - 1)?.flatten_all()?; // [b(t-1)]
    let mask = attention_mask
        .narrow(1, 1, t - 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?; // [b(t-1)]
    smoothed_cross_entropy(&pred, &labels, &mask, label_smoothing)
}

/// CLIP's loss: the mean of the image→text and text→image cross-entropies of the
/// scaled cosine similarities, the i-th image matching the i-th text.
///
/// # Shapes
/// * `image_embeds`, `text_embeds`: `[n, p]` (unnormalised); `logit_scale`: scalar
///   (log of the temperature's inverse) -> (loss, logits_per_image `[n, n]`)
pub fn clip_loss(
    image_embeds: &Tensor,
    text_embeds: &Tensor,
    logit_scale: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let n = image_embeds.dim(0)?;
    let img = l2_normalize(image_embeds)?; // [n, p]
    let txt = l2_normalize(text_embeds)?; // [n, p]
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(&logit_scale.exp()?)?; // [n, n]
    let labels = Tensor::arange(0u32, n as u32, logits.device())?;
    let l_i = cross_entropy(&logits, &labels)?;
    let l_t = cross_entropy(&logits.t()?, &labels)?;
    Ok((((l_i + l_t)? * 0.5)?, logits))
}

/// CLIP's loss with one hard negative caption per image (NegCLIP): image→text
/// cross-entropy over the batch's captions and the negatives (a negative whose `valid`
/// is 0 is left out), text→image over the batch's images.
///
/// # Shapes
/// * `image_embeds`, `text_embeds`: `[n, p]`; `negative_embeds`: `[k n, p]` (any number
///   of negatives; each competes for every image); `valid`: `[k n]` f32 0/1;
///   `logit_scale`: scalar -> (loss, logits_per_image `[n, n]`)
pub fn clip_loss_with_negatives(
    image_embeds: &Tensor,
    text_embeds: &Tensor,
    negative_embeds: &Tensor,
    valid: &Tensor,
    logit_scale: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let n = image_embeds.dim(0)?;
    let scale = logit_scale.exp()?;
    let img = l2_normalize(image_embeds)?; // [n, p]
    let txt = l2_normalize(text_embeds)?; // [n, p]
    let neg = l2_normalize(negative_embeds)?; // [n, p]
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?; // [n, n]
    let neg_logits = img.matmul(&neg.t()?)?.broadcast_mul(&scale)?; // [n, k n]
                                                                    // Invalid negatives get -1e4 (no weight after the softmax).
    let penalty = ((valid - 1.0)? * 1e4)?.unsqueeze(0)?; // [1, k n]
    let neg_logits = neg_logits.broadcast_add(&penalty)?;
    let all = Tensor::cat(&[&logits, &neg_logits], 1)?; // [n, n + k n]
    let labels = Tensor::arange(0u32, n as u32, logits.device())?;
    let l_i = cross_entropy(&all, &labels)?;
    let l_t = cross_entropy(&logits.t()?, &labels)?;
    Ok((((l_i + l_t)? * 0.5)?, logits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `torch.nn.functional.cross_entropy([[1., 2., 3.], [1., 0., -1.]], [2, 0],
    /// label_smoothing=0.1)` = 0.5076059... (computed by hand from the formula).
    #[test]
    fn smoothed_cross_entropy_matches_formula() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2., 3.], [1., 0., -1.], [5., 5., 5.]], &dev)?;
        let labels = Tensor::new(&[2u32, 0, 1], &dev)?;
        let mask = Tensor::new(&[1f32, 1., 0.], &dev)?;
        let got = smoothed_cross_entropy(&logits, &labels, &mask, 0.1)?.to_scalar::<f32>()?;
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let rows = [([1., 2., 3.], 2usize), ([1., 0., -1.], 0usize)];
        let mut want = 0.0;
        for (r, y) in rows {
            let l = lse(r);
            let nll = l - r[y];
            let smooth = r.iter().map(|x| l - x).sum::<f64>() / 3.0;
            want += 0.9 * nll + 0.1 * smooth;
        }
        want /= 2.0;
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn negatives_raise_the_loss_only_when_they_compete() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;
        let scale = Tensor::new(2.0f32, &dev)?;
        let (plain, _) = clip_loss(&x, &x, &scale)?;
        let far = Tensor::new(&[[-1f32, 0.], [0., -1.]], &dev)?;
        let ones = Tensor::new(&[1f32, 1.], &dev)?;
        let zeros = Tensor::new(&[0f32, 0.], &dev)?;
        let (with_far, _) = clip_loss_with_negatives(&x, &x, &far, &ones, &scale)?;
        let (with_same, _) = clip_loss_with_negatives(&x, &x, &x, &ones, &scale)?;
        let (masked, _) = clip_loss_with_negatives(&x, &x, &x, &zeros, &scale)?;
        let (p, f, s, m) = (
            plain.to_scalar::<f32>()?,
            with_far.to_scalar::<f32>()?,
            with_same.to_scalar::<f32>()?,
            masked.to_scalar::<f32>()?,
        );
        assert!(
            (m - p).abs() < 1e-6,
            "masked negatives change nothing: {m} vs {p}"
        );
        assert!(f > p && f < p + 0.05, "{f} vs {p}");
        assert!(s > p + 0.2, "{s} vs {p}");
        Ok(())
    }

    #[test]
    fn clip_loss_is_low_for_matching_pairs() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;
        let scale = Tensor::new(4.6f32, &dev)?;
        let (good, _) = clip_loss(&x, &x, &scale)?;
        let swapped = Tensor::new(&[[0f32, 1.], [1., 0.]], &dev)?;
        let (bad, _) = clip_loss(&x, &swapped, &scale)?;
        assert!(good.to_scalar::<f32>()? < 0.01);
        assert!(bad.to_scalar::<f32>()? > 10.0);
        Ok(())
    }
}
