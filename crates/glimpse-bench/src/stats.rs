//! Statistics over timed reps: medians, fastest reps, rates and side-to-side ratios.

use std::time::Instant;

/// The median; NaN for no values.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The shortest of some timed reps.
pub fn fastest(reps: &[f64]) -> Option<f64> {
    reps.iter().copied().reduce(f64::min)
}

/// GFLOP/s of `gflop` done in `secs` seconds.
pub fn rate(gflop: f64, secs: f64) -> Option<f64> {
    (secs > 0.0).then_some(gflop / secs)
}

/// Reference time / Glimpse time: above 1 means Glimpse is faster; `None` without both
/// or with no Glimpse time.
pub fn ratio(glimpse: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (glimpse, reference) {
        (Some(g), Some(r)) if g > 0.0 => Some(r / g),
        _ => None,
    }
}

/// Time to first token (from `start`) and the median gap between consecutive tokens,
/// in seconds; `None` without at least two stamps.
pub fn token_times(start: Instant, stamps: &[Instant]) -> Option<(f64, f64)> {
    let first = stamps.first()?;
    let gaps: Vec<f64> = stamps
        .windows(2)
        .map(|p| (p[1] - p[0]).as_secs_f64())
        .collect();
    if gaps.is_empty() {
        return None;
    }
    Some(((*first - start).as_secs_f64(), median(&gaps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn fastest_rates_and_ratios() {
        assert_eq!(fastest(&[0.3, 0.1, 0.2]), Some(0.1));
        assert_eq!(fastest(&[]), None);
        assert_eq!(rate(10.0, 0.5), Some(20.0));
        assert_eq!(rate(10.0, 0.0), None);
        assert_eq!(ratio(Some(0.5), Some(1.0)), Some(2.0));
        assert_eq!(ratio(Some(0.0), Some(1.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn token_times_are_first_token_and_median_gap() {
        use std::time::Duration;
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (ttft, per_token) = token_times(t0, &[at(100), at(110), at(130), at(140)]).unwrap();
        assert!((ttft - 0.100).abs() < 1e-9, "{ttft}");
        assert!((per_token - 0.010).abs() < 1e-9, "{per_token}"); // gaps 10, 20, 10 ms
        assert!(token_times(t0, &[at(100)]).is_none());
        assert!(token_times(t0, &[]).is_none());
    }
}
