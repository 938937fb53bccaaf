//! Activation ranges for static quantization: an observer turns the values an activation took
//! on the calibration samples into the range its uint8 quantization covers (per tensor,
//! asymmetric, always containing 0 so that zero padding and ReLU floors are exact).
//!
//! MinMax keeps every value; the others read a histogram and clip rare outliers, trading
//! their error for a finer step on everything else: percentile drops the outer 0.01 % on
//! each side, entropy minimizes the KL divergence between the clipped histogram and its
//! 256-level quantization (TensorRT's calibrator), mse minimizes the expected squared
//! quantization error.

use serde::Serialize;

/// How an activation's range is chosen from its observed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Observer {
    /// The smallest and largest value seen.
    Minmax,
    /// The 0.01 % and 99.99 % quantiles.
    Percentile,
    /// The clip that minimizes KL(histogram ‖ its 256-level quantization).
    Entropy,
    /// The clip that minimizes the mean squared quantization error.
    Mse,
}

/// Bins of an observer's histogram, over `[-m, m]` with `m` the largest magnitude seen.
pub const BINS: usize = 2048;

/// uint8 quantization of one activation: `q = clamp(round(x / scale) + zero_point, 0, 255)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    /// The step.
    pub scale: f32,
    /// The level that stands for 0.
    pub zero_point: u8,
}

impl ActivationQuant {
    /// The quantization covering `[lo, hi]` widened to contain 0 (scale 1 for an all-zero
    /// range, as onnxruntime does).
    ///
    /// ```
    /// use distq_converter::quantize::observe::ActivationQuant;
    /// let q = ActivationQuant::from_range(0.0, 2.55);
    /// assert_eq!(q.zero_point, 0);
    /// assert!((q.scale - 0.01).abs() < 1e-7);
    /// assert_eq!(q.restore(1.0), 1.0);
    /// ```
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = (hi - lo) / 255.0;
        if !(scale.is_finite() && scale > f32::MIN_POSITIVE) {
            return Self { scale: 1.0, zero_point: 0 };
        }
        Self { scale, zero_point: (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8 }
    }

    /// `x` quantized and dequantized.
    pub fn restore(&self, x: f32) -> f32 {
        let zero = self.zero_point as f32;
        ((x / self.scale).round_ties_even() + zero).clamp(0.0, 255.0) * self.scale - zero * self.scale
    }
}

/// What one activation did on the calibration samples: its extremes (first pass) and, for
/// the clipping observers, a histogram over `[-m, m]` (second pass).
#[derive(Debug, Clone)]
pub struct Observed {
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
    counts: Vec<u64>,
    /// Sum of the values in each bin: their mean stands for them in the error estimates.
    sums: Vec<f64>,
}

impl Observed {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self { min: f32::INFINITY, max: f32::NEG_INFINITY, counts: Vec::new(), sums: Vec::new() }
    }

    /// First pass: widens the extremes to cover `values` (NaN is ignored).
    pub fn extend_range(&mut self, values: &[f32]) {
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    /// Half the histogram's width.
    fn magnitude(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// Second pass: counts `values` into the histogram over `[-m, m]`.
    pub fn extend_histogram(&mut self, values: &[f32]) {
        let m = self.magnitude();
        if self.counts.is_empty() {
            self.counts = vec![0; BINS];
            self.sums = vec![0.0; BINS];
        }
        if !(m > 0.0 && m.is_finite()) {
            return;
        }
        let per_unit = BINS as f32 / (2.0 * m);
        for &v in values.iter().filter(|v| !v.is_nan()) {
            let bin = (((v + m) * per_unit) as usize).min(BINS - 1);
            self.counts[bin] += 1;
            self.sums[bin] += v as f64;
        }
    }

    /// Whether `observer` needs the second pass.
    pub fn needs_histogram(observer: Observer) -> bool {
        observer != Observer::Minmax
    }

    /// The quantization `observer` picks.
    pub fn quantization(&self, observer: Observer) -> ActivationQuant {
        // Nothing (or only NaN) seen.
        if self.min > self.max {
            return ActivationQuant::from_range(0.0, 0.0);
        }
        let total: u64 = self.counts.iter().sum();
        if observer == Observer::Minmax || total == 0 || !self.magnitude().is_finite() {
            return ActivationQuant::from_range(self.min, self.max);
        }
        let (lo, hi) = match observer {
            Observer::Minmax => (self.min, self.max),
            Observer::Percentile => self.percentile_range(total),
            Observer::Entropy => self.clip_at(self.entropy_half_width()),
            Observer::Mse => self.clip_at(self.mse_half_width()),
        };
        ActivationQuant::from_range(lo, hi)
    }

    /// The value at the left edge of `bin`.
    fn edge(&self, bin: usize) -> f32 {
        let m = self.magnitude();
        -m + 2.0 * m * bin as f32 / BINS as f32
    }

    /// `[min, max]` clipped to `±` the edge `half` bins from the centre.
    fn clip_at(&self, half: usize) -> (f32, f32) {
        let t = self.edge(BINS / 2 + half);
        (self.min.max(-t), self.max.min(t))
    }

    /// Bins from each end holding at most 0.01 % of the values are cut.
    fn percentile_range(&self, total: u64) -> (f32, f32) {
        let cut = total / 10_000;
        let beyond_cut = |seen: &mut u64, c: &u64| {
            *seen += c;
            *seen > cut
        };
        let (mut left, mut right) = (0, 0);
        let first = self.counts.iter().position(|c| beyond_cut(&mut left, c)).unwrap_or(0);
        let last = self.counts.iter().rposition(|c| beyond_cut(&mut right, c)).unwrap_or(BINS - 1);
        (self.min.max(self.edge(first)), self.max.min(self.edge(last + 1)))
    }

    /// Half-widths (in bins) worth trying: from 128 (one bin per level of the 256) to all.
    fn half_widths() -> std::ops::RangeInclusive<usize> {
        128..=BINS / 2
    }

    /// TensorRT's entropy calibration, on a histogram centred on 0: for each clip `±t`, the
    /// reference P is the clipped histogram with the outliers piled into its end bins, Q is
    /// the unclipped part merged into 256 levels and spread back evenly over the bins that
    /// had values; the clip with the smallest KL(P ‖ Q) wins.
    fn entropy_half_width(&self) -> usize {
        let c = BINS / 2;
        let mut best = (f64::INFINITY, BINS / 2);
        for half in Self::half_widths() {
            // The levels span only the signs that occur (a ReLU output gets all 256 on ≥ 0).
            let start = if self.min < 0.0 { c - half } else { c };
            let end = if self.max > 0.0 { c + half } else { c };
            if end == start {
                break;
            }
            let slice = &self.counts[start..end];
            let mut p: Vec<f64> = slice.iter().map(|&x| x as f64).collect();
            p[0] += self.counts[..start].iter().sum::<u64>() as f64;
            p[end - start - 1] += self.counts[end..].iter().sum::<u64>() as f64;
            let mut q = vec![0.0; slice.len()];
            let level_of = |k: usize| k * 256 / slice.len();
            let mut k = 0;
            while k < slice.len() {
                let level = level_of(k);
                let mut next = k;
                while next < slice.len() && level_of(next) == level {
                    next += 1;
                }
                let bins = &slice[k..next];
                let used = bins.iter().filter(|&&x| x > 0).count();
                let sum: u64 = bins.iter().sum();
                for (j, &x) in bins.iter().enumerate() {
                    if x > 0 {
                        q[k + j] = sum as f64 / used as f64;
                    }
                }
                k = next;
            }
            let kl = kl_divergence(&p, &q);
            if kl < best.0 {
                best = (kl, half);
            }
        }
        best.1
    }

    /// The clip whose quantization error (each bin's values taken at their mean, clipped and
    /// rounded as the 256 levels would) is smallest.
    fn mse_half_width(&self) -> usize {
        let mut best = (f64::INFINITY, BINS / 2);
        for half in Self::half_widths() {
            let (lo, hi) = self.clip_at(half);
            let q = ActivationQuant::from_range(lo, hi);
            let error: f64 = self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| {
                    let x = self.sums[i] / c as f64;
                    c as f64 * (q.restore(x as f32) as f64 - x).powi(2)
                })
                .sum();
            if error < best.0 {
                best = (error, half);
            }
        }
        best.1
    }
}

impl Default for Observed {
    fn default() -> Self {
        Self::new()
    }
}

/// KL(P ‖ Q) of two unnormalized histograms; where P has mass and Q none, Q is taken as
/// 10⁻⁴ (smoothing as onnxruntime's calibrator does: clipped outliers cost a little, not ∞).
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(&p, &q)| {
            let (p, q) = (p / sp, q / sq);
            p * (p / q.max(1e-4)).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `observer` run over `values` in two passes, as calibration does.
    fn observe(observer: Observer, values: &[f32]) -> ActivationQuant {
        let mut o = Observed::new();
        o.extend_range(values);
        if Observed::needs_histogram(observer) {
            for chunk in values.chunks(1000) {
                o.extend_histogram(chunk);
            }
        }
        o.quantization(observer)
    }

    /// A ReLU output: |Gaussian| from a 64-bit LCG (sum of 12 uniforms), plus `outliers`
    /// values at 100.
    fn relu_values(n: usize, outliers: usize) -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut v: Vec<f32> = (0..n).map(|_| ((0..12).map(|_| uniform()).sum::<f32>() - 6.0).max(0.0)).collect();
        v.extend(std::iter::repeat_n(100.0, outliers));
        v
    }

    fn mean_squared_error(q: ActivationQuant, values: &[f32]) -> f64 {
        values.iter().map(|&x| ((q.restore(x) - x) as f64).powi(2)).sum::<f64>() / values.len() as f64
    }

    #[test]
    fn minmax_covers_every_value_and_zero() {
        let q = observe(Observer::Minmax, &[1.0, 3.0, 2.0]);
        assert_eq!(q.zero_point, 0, "the range widens to contain 0");
        assert!((q.scale - 3.0 / 255.0).abs() < 1e-7);
        let q = observe(Observer::Minmax, &[-1.0, 0.5, 3.0]);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(q.zero_point, 64, "round(1 / (4/255)) = round(63.75)");
        assert_eq!(q.restore(0.0), 0.0, "0 is exact");
    }

    #[test]
    fn degenerate_inputs_give_a_usable_quantization() {
        for values in [&[][..], &[0.0, 0.0][..], &[f32::NAN][..]] {
            for observer in [Observer::Minmax, Observer::Percentile, Observer::Entropy, Observer::Mse] {
                let q = observe(observer, values);
                assert!(q.scale.is_finite() && q.scale > 0.0, "{observer:?} on {values:?}: {q:?}");
            }
        }
    }

    /// With a few huge outliers, percentile and entropy clip them and quantize the bulk of
    /// the values (what the next layer mostly sees) with a smaller error than MinMax. (MSE
    /// rightly keeps them: five errors of 90 outweigh the rounding of everything else.)
    #[test]
    fn percentile_and_entropy_clip_rare_outliers() {
        let values = relu_values(100_000, 5);
        let bulk = &values[..100_000];
        let minmax = observe(Observer::Minmax, &values);
        assert!((minmax.scale - 100.0 / 255.0).abs() < 1e-6);
        for observer in [Observer::Percentile, Observer::Entropy] {
            let q = observe(observer, &values);
            let top = (255 - q.zero_point) as f32 * q.scale;
            assert!(top < 50.0, "{observer:?} clips the outliers at 100: top {top}");
            assert!(top > 1.5, "{observer:?} keeps the Gaussian bulk: top {top}");
            let (e, e_minmax) = (mean_squared_error(q, bulk), mean_squared_error(minmax, bulk));
            assert!(e < e_minmax / 4.0, "{observer:?}: bulk error {e} vs minmax {e_minmax}");
        }
    }

    /// On a long thin tail (exponential values) the MSE observer clips it, with a smaller
    /// overall error than MinMax.
    #[test]
    fn mse_clips_a_long_tail() {
        let values: Vec<f32> = (1..=100_000).map(|i| -(i as f32 / 100_001.0).ln()).collect();
        let (mse, minmax) = (observe(Observer::Mse, &values), observe(Observer::Minmax, &values));
        let top = 255.0 * mse.scale;
        assert!(top < 0.95 * 255.0 * minmax.scale, "clipped at {top}, max {}", 255.0 * minmax.scale);
        let (e, e_minmax) = (mean_squared_error(mse, &values), mean_squared_error(minmax, &values));
        assert!(e < e_minmax, "mse {e} vs minmax {e_minmax}");
    }

    /// The MSE observer's pick is at least as good as MinMax on the whole data set (outliers
    /// included), since MinMax's range is one of its candidates.
    #[test]
    fn mse_is_never_worse_than_minmax_overall() {
        for outliers in [0, 5, 500] {
            let values = relu_values(20_000, outliers);
            let (mse, minmax) = (observe(Observer::Mse, &values), observe(Observer::Minmax, &values));
            let (e, e_minmax) = (mean_squared_error(mse, &values), mean_squared_error(minmax, &values));
            assert!(e <= e_minmax * 1.01, "{outliers} outliers: mse {e} vs minmax {e_minmax}");
        }
    }
}
