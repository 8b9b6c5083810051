//! The bench's deterministic inputs: the project's one SplitMix64 stream, seeded the
//! same in every worker so that each run times the same values (candle cannot seed
//! its CPU generator).

use candle_core::{Device, Tensor};
use glimpse_data::rng::SplitMix64;

/// A tensor of values uniform in [-2, 2) (the range of normalised pixels), drawn from
/// the top 24 bits of each output of `rng`.
pub(crate) fn pixels(
    rng: &mut SplitMix64,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(data, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pixels_are_deterministic_and_in_range() {
        let draw = || {
            pixels(&mut SplitMix64::new(1), &[2, 3, 4, 4], &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b) = (draw(), draw());
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
    }

    /// The stream is part of what a run times: pin its first values so that a change
    /// to it shows.
    #[test]
    fn the_stream_is_splitmix64() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
