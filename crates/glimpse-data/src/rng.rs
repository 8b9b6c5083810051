//! SplitMix64, the one generator behind every seeded draw in Glimpse: the synthetic
//! world, the dataset shuffler and training (initial weights, negatives, caption
//! choice). Library RNGs may change their streams between versions; this one is fixed
//! forever, so datasets stay byte-identical and a resumed run draws the same numbers.
//!
//! Two ways of drawing an index below `n` exist because recorded data depends on each:
//! the world and the shuffler take [`SplitMix64::below_from_high_bits`], training takes
//! [`SplitMix64::below_from_unit`]. They give different sequences; neither may change.

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// The multipliers of SplitMix64's two mixing rounds.
const MIX1: u64 = 0xbf58_476d_1ce4_e5b9;
const MIX2: u64 = 0x94d0_49bb_1331_11eb;

/// SplitMix64 (Steele, Lea and Flood, 2014), as in `java.util.SplittableRandom`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state is `state`.
    pub fn new(state: u64) -> Self {
        SplitMix64(state)
    }

    /// Folds a key (a sample index, an epoch, a purpose) into the stream: the next
    /// output, xor `key * multiplier`, becomes the state of the returned generator.
    /// Chaining folds gives each tuple of keys its own stream.
    fn fold(mut self, key: u64, multiplier: u64) -> Self {
        SplitMix64(self.next_u64() ^ key.wrapping_mul(multiplier))
    }

    /// The stream for `(seed, a, b)` of one user of the generator; `salt` keeps users
    /// apart (the world's samples, the shuffler's epochs).
    pub fn salted(salt: u64, seed: u64, a: u64, b: u64) -> Self {
        SplitMix64::new(seed ^ salt).fold(a, GAMMA).fold(b, MIX1)
    }

    /// The training stream for `(seed, a, b)`, e.g. (run seed, step, purpose).
    pub fn derive(seed: u64, a: u64, b: u64) -> Self {
        SplitMix64::new(seed ^ GAMMA).fold(a, MIX1).fold(b, MIX2)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(MIX1);
        z = (z ^ (z >> 27)).wrapping_mul(MIX2);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`0 < n < 2^32`): the top 32 bits times `n`, shifted down
    /// (Lemire's multiply-shift). The synthetic world and the shuffler draw this way.
    pub fn below_from_high_bits(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in `0..n` (`n > 0`): [`unit`](Self::unit) scaled by `n` and truncated.
    /// Training draws this way.
    pub fn below_from_unit(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    /// Fisher-Yates, drawing with [`below_from_high_bits`](Self::below_from_high_bits).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below_from_high_bits(i + 1);
            v.swap(i, j);
        }
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// An index drawn with probability proportional to `weights` (non-negative, not
    /// all zero), like `torch.multinomial(weights, 1)`.
    pub fn weighted(&mut self, weights: &[f32]) -> usize {
        let total: f64 = weights.iter().map(|&w| w.max(0.0) as f64).sum();
        let mut u = self.unit() * total;
        for (i, &w) in weights.iter().enumerate() {
            u -= w.max(0.0) as f64;
            if u < 0.0 {
                return i;
            }
        }
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streams recorded datasets and checkpoints depend on, pinned to the values
    /// the generator gave before it was shared.
    #[test]
    fn sequences_are_fixed() {
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            SplitMix64::derive(7, 3, 0x71).next_u64(),
            0xb3dd_c3d1_7cc8_0c35
        );
        // The world's per-sample chain (seed 5, sample 9, stream 4).
        assert_eq!(
            SplitMix64::salted(0x6a09_e667_f3bc_c908, 5, 9, 4).next_u64(),
            0xe8d2_d229_0974_210e
        );
        // The shuffler's (seed 5, epoch 9, stream 2).
        assert_eq!(
            SplitMix64::salted(0x5851_f42d_4c95_7f2d, 5, 9, 2).next_u64(),
            0xe7dd_2f69_bb08_b4e6
        );
        let mut r = SplitMix64::new(42);
        let hi: Vec<usize> = (0..6).map(|_| r.below_from_high_bits(1000)).collect();
        assert_eq!(hi, [741, 159, 278, 344, 38, 868]);
        let mut r = SplitMix64::new(42);
        let unit: Vec<usize> = (0..6).map(|_| r.below_from_unit(1000)).collect();
        assert_eq!(unit, [741, 159, 278, 344, 38, 868]);
    }

    #[test]
    fn weighted_never_picks_zero_weight() {
        let mut r = SplitMix64::new(3);
        for _ in 0..1000 {
            let i = r.weighted(&[0.5, 0.0, 0.5]);
            assert_ne!(i, 1);
        }
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = SplitMix64::new(1);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
