//! Rows joining and leaving a running batch: the key masks that make it possible.
//!
//! A batch that decodes while new sequences join holds rows of different lengths in one
//! cache. The shorter rows are left-padded with zero keys/values and a 0/1 key mask
//! hides the padding; positions count only attended keys (`cumsum(mask) - 1`), so a
//! padded row sees exactly what it would see alone. When rows leave, positions that no
//! remaining row attends to are dropped from the front.

use candle_core::{DType, Device, Result, Tensor};

/// Stacks two `[rows, len]` key masks (`None`: every position attended) after
/// left-padding the shorter with zeros; `None` when the result attends everywhere.
pub fn stack_masks(
    a: Option<&Tensor>,
    a_shape: (usize, usize),
    b: Option<&Tensor>,
    b_shape: (usize, usize),
    device: &Device,
) -> Result<Option<Tensor>> {
    let len = a_shape.1.max(b_shape.1);
    if a.is_none() && b.is_none() && a_shape.1 == b_shape.1 {
        return Ok(None);
    }
    let full = |m: Option<&Tensor>, (rows, n): (usize, usize)| -> Result<Tensor> {
        let m = match m {
            Some(m) => m.to_dtype(DType::F32)?,
            None => Tensor::ones((rows, n), DType::F32, device)?,
        };
        if n == len {
            return Ok(m);
        }
        let zeros = Tensor::zeros((rows, len - n), DType::F32, device)?;
        Tensor::cat(&[&zeros, &m], 1)
    };
    let stacked = Tensor::cat(&[&full(a, a_shape)?, &full(b, b_shape)?], 0)?;
    Ok(Some(stacked))
}

/// How many leading columns of a `[rows, len]` 0/1 mask are 0 in every row.
pub fn leading_padding(mask: &Tensor) -> Result<usize> {
    let any = mask.to_dtype(DType::F32)?.max(0)?.to_vec1::<f32>()?; // [len]
    Ok(any.iter().take_while(|&&v| v == 0.0).count())
}

/// Whether a 0/1 mask attends everywhere.
pub fn all_attended(mask: &Tensor) -> Result<bool> {
    Ok(mask.to_dtype(DType::F32)?.min_all()?.to_scalar::<f32>()? >= 1.0)
}

/// Positions of the last `len` columns of a `[rows, total]` 0/1 mask, as u32
/// `[rows, len]`: `cumsum(mask) - 1` (0 at padding), and the largest of them.
pub fn positions(mask: &Tensor, len: usize) -> Result<(Tensor, u32)> {
    let total = mask.dim(1)?;
    let m = mask.to_dtype(DType::F32)?;
    let ids = ((m.cumsum(1)? - 1.0)? * &m)?.narrow(1, total - len, len)?;
    let max = ids.max_all()?.to_scalar::<f32>()?.max(0.0) as u32;
    Ok((ids.to_dtype(DType::U32)?.contiguous()?, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_pad_on_the_left_and_positions_skip_padding() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 1., 1.]], &dev).unwrap();
        let m = stack_masks(Some(&a), (1, 3), None, (2, 1), &dev)
            .unwrap()
            .unwrap();
        assert_eq!(
            m.to_vec2::<f32>().unwrap(),
            vec![vec![1., 1., 1.], vec![0., 0., 1.], vec![0., 0., 1.]]
        );
        assert!(stack_masks(None, (1, 2), None, (3, 2), &dev)
            .unwrap()
            .is_none());
        let (ids, max) = positions(&m, 1).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![2], vec![0], vec![0]]
        );
        assert_eq!(max, 2);
        let tail = m.narrow(0, 1, 2).unwrap();
        assert_eq!(leading_padding(&tail).unwrap(), 2);
        assert!(!all_attended(&tail).unwrap());
    }
}
