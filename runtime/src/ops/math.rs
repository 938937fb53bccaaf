//! Branch-free f32 approximations of `exp` and `erf` that the compiler can vectorize (the
//! libm versions are scalar calls, which made GELU and Softmax dominate transformer runs).

/// `exp(x)` for f32: Cephes' range reduction to `2^n · e^r`, |r| ≤ ln2/2, and a degree-5
/// polynomial for `e^r`; relative error below 2e-7 over the float range. Results that would
/// be subnormal are flushed to 0: subnormals make every later multiply ~100× slower (masked
/// attention scores of −3.4e38 end up here).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOWEST: f32 = -87.0; // exp(-87) ≈ 1.6e-38, still a normal float
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a short high part and a correction, so x - n·ln2 stays exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let flush = x < LOWEST;
    let x = x.clamp(LOWEST, 88.376_26);
    // Round to nearest by the 1.5·2^23 trick: `round()` is a libm call without SSE4.1.
    const ROUNDER: f32 = 12_582_912.0;
    let n = (x * LOG2E + ROUNDER) - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e_r = p * r * r + r + 1.0;
    // 2^n through the exponent bits; n is within [-126, 127] after the clamp.
    // Safety: n is an integer in [-126, 127] (x was clamped), so the conversion is exact;
    // unlike `as`, it needs no saturation fix-up, which keeps the loop vectorized.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let v = e_r * f32::from_bits(((n + 127) as u32) << 23);
    if flush { 0.0 } else { v }
}

/// `erf(x)` for f32: the odd/even rational fit on [-4, 4] used by Eigen (erf is ±1 to f32
/// precision beyond); absolute error about 1e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Folds `xs` into 16 independent lanes with `step(lane, x)`, then the lanes together with
/// `combine` pairwise (a tree, not a 16-long chain: softmax lanes are often only 64 long, and
/// a sequential combine cost more than the fold itself). The loop vectorizes, unlike one
/// sequential chain (which float semantics forbid reordering). For sums this is also more
/// accurate (short partial sums).
#[inline(always)]
pub fn fold_lanes(xs: &[f32], init: f32, step: impl Fn(f32, f32) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = step(lanes[i], c[i]);
        }
    }
    // Plain `for` loops (not `fold`/`for_each`, which may stay out of line) so that all of
    // this inlines into callers compiled for wider vectors.
    let mut total = init;
    for &x in chunks.remainder() {
        total = step(total, x);
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] = combine(lanes[i], lanes[i + width]);
        }
    }
    combine(total, lanes[0])
}

/// Σ xs, vectorized (see [`fold_lanes`]).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    fold_lanes(xs, 0.0, |a, b| a + b, |a, b| a + b)
}

/// A plain comparison, not `f32::max`, whose NaN rules cost extra instructions per lane.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// See [`larger`].
#[inline(always)]
fn smaller(a: f32, b: f32) -> f32 {
    if b < a { b } else { a }
}

/// max xs (−∞ when empty; NaN ignored), vectorized.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    fold_lanes(xs, f32::NEG_INFINITY, larger, larger)
}

/// (min xs, max xs) in one pass ((+∞, −∞) when empty; NaN ignored). 64 lanes: four
/// independent vector accumulators per bound hide the comparison latency, which a single
/// 16-lane accumulator does not (the order of comparisons cannot change the result).
#[inline(always)]
pub fn min_max(xs: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 64], [f32::NEG_INFINITY; 64]);
    let mut chunks = xs.chunks_exact(64);
    for c in &mut chunks {
        for i in 0..64 {
            lo[i] = smaller(lo[i], c[i]);
            hi[i] = larger(hi[i], c[i]);
        }
    }
    let rest = chunks.remainder();
    let (mut low, mut high) = (fold_lanes(rest, f32::INFINITY, smaller, smaller), fold_lanes(rest, f32::NEG_INFINITY, larger, larger));
    for i in 0..64 {
        low = smaller(low, lo[i]);
        high = larger(high, hi[i]);
    }
    (low, high)
}

/// `tanh(x)` for f32: `2·sigmoid(2x) − 1` on the vectorizable [`exp`], except for |x| < 0.1,
/// where that difference of numbers near 1 keeps only the absolute precision of a small
/// result (about 1e-3 relative at x = 5e-5, which failed ONNX's Mish case) and the odd Taylor
/// series to x⁹ is exact to f32 precision instead (the next term is below 1e-13 there).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x2 = x * x;
    let series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    let far = 2.0 * sigmoid(2.0 * x) - 1.0;
    if x.abs() < 0.1 { series } else { far }
}

/// Logistic sigmoid on top of [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against f64's tanh, small arguments included (where 2·sigmoid(2x) − 1
    /// alone loses it), through the switch at 0.1 and out to saturation.
    #[test]
    fn tanh_keeps_relative_precision() {
        let mut worst = 0f64;
        for i in -4000..=4000 {
            for x in [i as f32 * 2.5e-3, i as f32 * 1e-7, (i as f32 * 1e-3).exp() * 1e-8] {
                let want = (x as f64).tanh();
                let error = if want == 0.0 { tanh(x).abs() as f64 } else { ((tanh(x) as f64 - want) / want).abs() };
                worst = worst.max(error);
            }
        }
        assert!(worst < 2e-6, "worst relative error {worst:e}");
        assert_eq!((tanh(30.0), tanh(-30.0), tanh(0.0)), (1.0, -1.0, 0.0));
    }

    #[test]
    fn min_max_matches_sequential_scan() {
        for len in [0, 1, 15, 16, 63, 64, 65, 200, 1031] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1013) as f32 - 500.25).collect();
            let want = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            assert_eq!(min_max(&xs), want, "len {len}");
            assert_eq!(max(&xs), want.1, "len {len}");
        }
        assert_eq!(min_max(&[f32::NAN, 2.0, -1.0]), (-1.0, 2.0));
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in -8699..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn erf_matches_table() {
        // Abramowitz & Stegun table 7.1.
        for (x, e) in [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (3.5, 0.999_999_3),
            (9.0, 1.0),
        ] {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {}, expected {e}", erf(x));
        }
    }
}
