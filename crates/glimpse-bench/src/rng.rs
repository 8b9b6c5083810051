//! The bench's own deterministic inputs: a SplitMix64 stream, seeded the same in every
//! worker so that each run times the same values.

use candle_core::{Device, Tensor};

/// Deterministic inputs without a dependency (candle cannot seed its CPU generator).
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Values uniform in [-2, 2): the range of normalised pixels.
    pub fn tensor(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            .collect();
        Tensor::from_vec(data, shape, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pixels_are_deterministic_and_in_range() {
        let a = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let b = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
    }

    /// The stream is part of what a run times: pin its first values so that a change
    /// to it shows.
    #[test]
    fn the_stream_is_splitmix64() {
        let mut rng = SplitMix(0);
        assert_eq!(rng.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next(), 0x6E78_9E6A_A1B9_65F4);
        let mut seeded = SplitMix(0x5EED);
        let first = seeded.next();
        assert_eq!(SplitMix(0x5EED).next(), first);
    }
}
