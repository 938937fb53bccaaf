//! `QLinearConv`: convolution of quantized activations and weights on the integer GEMM,
//! requantized in the GEMM's epilogue. Imported as the ONNX op and made by the planner from
//! static QDQ graphs (`DequantizeLinear → Conv → QuantizeLinear`, see `fuse.rs`).
//!
//! Layout: the kernels multiply u8 activation rows by i8 weight panels packed once, so each
//! output pixel's patch becomes one activation row (`[oh·ow, kh·kw·C/group]`, copied from
//! the input transposed to channel-last, padding filled with the input zero point, which
//! stands for 0; a 1×1 conv uses the transposed input as is) and the weights of a group one
//! packed `[kh·kw·C/group, M/group]` matrix in the same order; the `[pixels, channels]`
//! result is transposed into NCHW.
//! Depthwise convs (one channel per group) skip the GEMM and accumulate each plane in i32.

use super::conv::{ConvDims, Geometry, depthwise_plane};
use super::quant::{Bounds, Requantize, Requantized, activations_u8, pack_weights, weight_zeros};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, PreparedWeights, expect_dtype, numel, optional, out, required};
use crate::error::{Result, ensure};
use crate::kernels::best_gemm_u8i8;
use crate::kernels::gemm::{PackedI8, gemm_u8i8_with};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("QLinearConv", import)];

fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QLinearConv::new(Geometry::import(c, false)?)))
}

/// `QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
/// B?)`: `y = saturate(round((Σ (x − x_zero)(w − w_zero) + B) · x_scale · w_scale / y_scale)
/// + y_zero)`, w_scale and w_zero_point per tensor or per output channel, B int32.
#[derive(Debug)]
pub struct QLinearConv {
    geom: Geometry,
    /// A fused activation's float range.
    bounds: Bounds,
    /// Made by fusion from a QDQ Conv whose result stays float: no output scale and zero
    /// point, f32 out.
    float_output: bool,
    /// Per group, the weights packed for the GEMM (unused by depthwise convs).
    packed: PreparedWeights<Vec<PackedI8>>,
}

impl QLinearConv {
    pub(crate) fn new(geom: Geometry) -> QLinearConv {
        QLinearConv::fused(geom, (None, None), false)
    }

    /// The fused form: a fused activation clamps the float result to `bounds` (Relu, Clip);
    /// with `float_output` the result is not quantized again.
    pub(crate) fn fused(geom: Geometry, bounds: Bounds, float_output: bool) -> QLinearConv {
        QLinearConv { geom, bounds, float_output, packed: PreparedWeights::default() }
    }
}

impl Op for QLinearConv {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * super::per_filter(inputs, 3), true)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 3)?);
        expect_dtype(x, &[DataType::U8, DataType::I8], "input x")?;
        expect_dtype(w, &[DataType::U8, DataType::I8], "weight w")?;
        let d = self.geom.conv(&x.shape, &w.shape)?;
        for (i, what) in [(1, "x_scale"), (4, "w_scale")] {
            expect_dtype(required(inputs, i)?, &[DataType::F32], what)?;
        }
        if let Some(b) = optional(inputs, 8) {
            expect_dtype(b, &[DataType::I32], "bias B")?;
            ensure!(b.shape == [d.m], "bias {:?} should be [{}]", b.shape, d.m);
        }
        if self.float_output {
            return Ok(vec![Fact::new(DataType::F32, d.shape)]);
        }
        expect_dtype(required(inputs, 6)?, &[DataType::F32], "y_scale")?;
        let y_zero = required(inputs, 7)?;
        expect_dtype(y_zero, &[DataType::U8, DataType::I8], "y_zero_point")?;
        Ok(vec![Fact::new(y_zero.dtype, d.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 3)?);
        let d = self.geom.conv(x.shape(), w.shape())?;
        let output = if self.float_output { None } else { Some((required(inputs, 6)?, required(inputs, 7)?)) };
        let requantize = Requantize::new(required(inputs, 1)?, required(inputs, 4)?, output, optional(inputs, 8), d.m, self.bounds)?;
        let (xs, x_zero) = activations_u8(x, optional(inputs, 2))?;
        let w_zeros = weight_zeros(w.dtype(), optional(inputs, 5), d.m)?;
        let y = match requantize.dtype {
            DataType::U8 => self.conv::<u8>(&d, &xs, x_zero, w, w_zeros, &requantize, pool)?,
            DataType::I8 => self.conv::<i8>(&d, &xs, x_zero, w, w_zeros, &requantize, pool)?,
            _ => self.conv::<f32>(&d, &xs, x_zero, w, w_zeros, &requantize, pool)?,
        };
        Ok(vec![y])
    }
}

impl QLinearConv {
    #[allow(clippy::too_many_arguments)]
    fn conv<T: Requantized>(
        &self,
        d: &ConvDims,
        x: &[u8],
        x_zero: u8,
        w: &Tensor,
        w_zeros: Vec<i8>,
        requantize: &Requantize,
        pool: &mut BufferPool,
    ) -> Result<Tensor> {
        let (cg, mg, plane, pixels) = (d.cg(), d.mg(), d.h * d.w, d.oh * d.ow);
        let mut y = pool.overwritable(numel(&d.shape)?);
        if d.depthwise() {
            let weights: Vec<i32> = match w.dtype() {
                DataType::I8 => w.as_slice::<i8>()?.iter().map(|&v| v as i32).collect(),
                _ => w.as_slice::<u8>()?.iter().map(|&v| v as i32 - 128).collect(),
            };
            let taps = d.kh * d.kw;
            let (mut xi, mut acc, mut padded) = (vec![0i32; plane], vec![0i32; pixels], Vec::new());
            for (b, ch) in (0..d.batch).flat_map(|b| (0..d.c).map(move |ch| (b, ch))) {
                for (v, &q) in xi.iter_mut().zip(&x[(b * d.c + ch) * plane..][..plane]) {
                    *v = q as i32 - x_zero as i32;
                }
                let k: Vec<i32> = weights[ch * taps..][..taps].iter().map(|&v| v - w_zeros[ch] as i32).collect();
                acc.fill(0);
                depthwise_plane(&xi, &k, d, &mut padded, &mut acc);
                requantize.apply_to_column(ch, &acc, &mut y[(b * d.m + ch) * pixels..][..pixels]);
            }
            return out(d.shape.clone(), y);
        }
        // Reduction index p = (ki·kw + kj)·C/group + ci: a patch row is then kh·kw
        // contiguous channel vectors of the channel-last input.
        let (k, taps) = (cg * d.kh * d.kw, d.kh * d.kw);
        let packed = self.packed.get(w, || {
            (0..d.group)
                .map(|g| pack_weights(w, k, w_zeros[g * mg..(g + 1) * mg].to_vec(), |p, j| (g * mg + j) * k + p % cg * taps + p / cg))
                .collect::<Result<Vec<_>>>()
        })?;
        ensure!(packed.len() == d.group && packed.iter().all(|p| p.k() == k), "packed weights do not fit this conv (model changed?)");
        let pointwise = d.pointwise();
        let mut channel_last = vec![0u8; plane * cg];
        let mut rows = if pointwise { Vec::new() } else { vec![0u8; pixels * k] };
        let mut by_pixel = vec![T::default(); pixels * mg];
        for b in 0..d.batch {
            for (g, weights) in packed.iter().enumerate() {
                transpose(&x[(b * d.c + g * cg) * plane..][..cg * plane], cg, plane, &mut channel_last);
                if !pointwise {
                    patch_rows(&channel_last, cg, d, x_zero, &mut rows);
                }
                let a = if pointwise { &channel_last } else { &rows };
                gemm_u8i8_with(best_gemm_u8i8(), a, x_zero, weights, &mut by_pixel, |_, col0, acc, out| {
                    requantize.apply(g * mg + col0, acc, out)
                });
                transpose(&by_pixel, pixels, mg, &mut y[(b * d.m + g * mg) * pixels..][..mg * pixels]);
            }
        }
        out(d.shape.clone(), y)
    }
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` matrix, in cache-sized tiles.
fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Unfolds a channel-last input (`[H, W, C]`) into one row per output pixel, `[oh·ow,
/// kh·kw·C]`: each tap a copy of one pixel's channels, or `pad` where it hits the padding.
fn patch_rows(x: &[u8], c: usize, d: &ConvDims, pad: u8, rows: &mut [u8]) {
    let (sh, dh, ph) = (d.ah.2, d.ah.3, d.ah.4 as isize);
    let (sw, dw, pw) = (d.aw.2, d.aw.3, d.aw.4 as isize);
    let k = c * d.kh * d.kw;
    for oy in 0..d.oh {
        for ox in 0..d.ow {
            let row = &mut rows[(oy * d.ow + ox) * k..][..k];
            for (tap, dst) in row.chunks_exact_mut(c).enumerate() {
                let iy = (oy * sh + tap / d.kw * dh) as isize - ph;
                let ix = (ox * sw + tap % d.kw * dw) as isize - pw;
                if iy < 0 || iy >= d.h as isize || ix < 0 || ix >= d.w as isize {
                    dst.fill(pad);
                } else {
                    dst.copy_from_slice(&x[(iy as usize * d.w + ix as usize) * c..][..c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::AutoPad;
    use super::super::test_util::run;
    use super::*;

    fn t<T: crate::tensor::Element>(shape: &[usize], v: Vec<T>) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v).unwrap())
    }

    #[test]
    fn matches_the_spec_example() {
        #[rustfmt::skip]
        let x = vec![255u8, 174, 162, 25, 203, 168, 58, 15, 59, 237, 95, 129, 0, 64, 56, 242, 153, 221, 168, 12, 166,
            232, 178, 186, 195, 237, 162, 237, 188, 39, 124, 77, 80, 102, 43, 127, 230, 21, 83, 41, 40, 134,
            255, 154, 92, 141, 42, 148, 247];
        #[rustfmt::skip]
        let want = vec![0u8, 81, 93, 230, 52, 87, 197, 240, 196, 18, 160, 126, 255, 191, 199, 13, 102, 34, 87, 243, 89,
            23, 77, 69, 60, 18, 93, 18, 67, 216, 131, 178, 175, 153, 212, 128, 25, 234, 172, 214, 215, 121,
            0, 101, 163, 114, 213, 107, 8];
        let geom =
            Geometry { kernel: None, strides: None, dilations: None, pads: None, auto_pad: AutoPad::NotSet, group: 1, ceil_mode: false };
        let inputs = [
            t(&[1, 1, 7, 7], x),
            t(&[], vec![0.003_692_047f32]),
            t(&[], vec![132u8]),
            t(&[1, 1, 1, 1], vec![0u8]),
            t(&[1], vec![0.001_727_945_8f32]),
            t(&[1], vec![255u8]),
            t(&[], vec![0.001_626_812_6f32]),
            t(&[], vec![123u8]),
        ];
        let y = run(&QLinearConv::new(geom), &inputs).unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), want);
    }

    /// One case of the table: 2-D shapes (`h = 1` with `one_d` makes rank-3 tensors).
    struct Case {
        x: [usize; 4],
        w: [usize; 4],
        pads: [usize; 4],
        strides: [usize; 2],
        dilations: [usize; 2],
        group: usize,
        one_d: bool,
    }

    fn pseudo(n: usize, seed: u32) -> Vec<u8> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40503)) >> 13) as u8).collect()
    }

    /// The definition: exact integer sums, then onnxruntime's requantization.
    #[allow(clippy::too_many_arguments)]
    fn naive(c: &Case, x: &[i32], xz: i32, w: &[i32], wz: &[i32], bias: &[i32], mult: &[f32], yz: i32, lo: i32, hi: i32) -> Vec<i32> {
        let ([n, ch, h, wd], [m, cg, kh, kw]) = (c.x, c.w);
        let oh = (h + c.pads[0] + c.pads[2] - (kh - 1) * c.dilations[0] - 1) / c.strides[0] + 1;
        let ow = (wd + c.pads[1] + c.pads[3] - (kw - 1) * c.dilations[1] - 1) / c.strides[1] + 1;
        let mg = m / c.group;
        let mut y = Vec::new();
        for b in 0..n {
            for mo in 0..m {
                let g = mo / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[mo];
                        for ci in 0..cg {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let iy = (oy * c.strides[0] + ki * c.dilations[0]) as isize - c.pads[0] as isize;
                                    let ix = (ox * c.strides[1] + kj * c.dilations[1]) as isize - c.pads[1] as isize;
                                    let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd;
                                    let xv = if inside { x[((b * ch + g * cg + ci) * h + iy as usize) * wd + ix as usize] } else { xz };
                                    acc += (xv - xz) * (w[((mo * cg + ci) * kh + ki) * kw + kj] - wz[mo]);
                                }
                            }
                        }
                        y.push(((acc as f32 * mult[mo]).round_ties_even() as i32 + yz).clamp(lo, hi));
                    }
                }
            }
        }
        y
    }

    /// Every path (GEMM general, pointwise, grouped, depthwise; strides, dilations, pads,
    /// 1-D) with u8 and i8 activations and weights, per-tensor and per-channel parameters,
    /// zero points at the limits, and a bias, equals the definition exactly.
    #[test]
    fn table_matches_the_definition() {
        let case = |x, w, pads, strides, dilations, group| Case { x, w, pads, strides, dilations, group, one_d: false };
        let cases = [
            case([1, 3, 5, 6], [4, 3, 3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 1),
            case([2, 5, 4, 3], [7, 5, 1, 1], [0; 4], [1, 1], [1, 1], 1),
            case([1, 4, 7, 5], [4, 1, 3, 3], [1, 1, 1, 1], [2, 2], [1, 1], 4),
            case([1, 6, 6, 6], [6, 1, 5, 5], [2, 2, 2, 2], [1, 1], [1, 1], 6),
            case([1, 4, 6, 6], [6, 2, 3, 3], [1, 0, 2, 1], [2, 1], [1, 1], 2),
            case([1, 3, 9, 8], [5, 3, 3, 2], [2, 1, 2, 1], [1, 2], [2, 3], 1),
            case([1, 8, 3, 3], [9, 8, 1, 1], [1, 1, 1, 1], [2, 2], [1, 1], 1),
            case([1, 33, 4, 5], [17, 33, 3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 1),
            Case { x: [2, 3, 1, 11], w: [4, 3, 1, 3], pads: [0, 2, 0, 1], strides: [1, 2], dilations: [1, 1], group: 1, one_d: true },
        ];
        for (ci, c) in cases.iter().enumerate() {
            for (variant, (x_u8, w_u8, per_channel, y_u8)) in
                [(true, false, true, true), (false, false, false, false), (true, true, false, true), (false, true, true, false)]
                    .into_iter()
                    .enumerate()
            {
                let seed = (ci * 4 + variant) as u32;
                let m = c.w[0];
                let as_i32 = |v: &[u8], unsigned: bool| -> Vec<i32> {
                    v.iter().map(|&b| if unsigned { b as i32 } else { b as i8 as i32 }).collect()
                };
                let xb = pseudo(c.x.iter().product(), seed);
                let wb = pseudo(c.w.iter().product(), seed + 100);
                let (xi, wi) = (as_i32(&xb, x_u8), as_i32(&wb, w_u8));
                // Zero points at the limits of their types.
                let xz = if x_u8 { [255, 0, 128, 3][variant] } else { [-128, 127, 0, -5][variant] };
                let wz: Vec<i32> = if per_channel {
                    (0..m).map(|j| if w_u8 { [0, 255, 128][j % 3] } else { [-128, 127, 0][j % 3] }).collect()
                } else {
                    vec![if w_u8 { 200 } else { -3 }; m]
                };
                let w_scales: Vec<f32> = (0..if per_channel { m } else { 1 }).map(|j| 0.002 + 0.0007 * j as f32).collect();
                let (x_scale, y_scale) = (0.013f32, 0.37f32);
                let bias: Vec<i32> = (0..m).map(|j| (j as i32 - 3) * 1234).collect();
                let mult: Vec<f32> = (0..m).map(|j| x_scale * w_scales[if per_channel { j } else { 0 }] / y_scale).collect();
                let (yz, lo, hi) = if y_u8 { (100, 0, 255) } else { (-7, -128, 127) };
                let want = naive(c, &xi, xz, &wi, &wz, &bias, &mult, yz, lo, hi);

                let shape = |s: [usize; 4]| if c.one_d { vec![s[0], s[1], s[3]] } else { s.to_vec() };
                let quantized = |v: Vec<u8>, shape: &[usize], unsigned: bool| -> Option<Tensor> {
                    if unsigned { t(shape, v) } else { t(shape, v.into_iter().map(|b| b as i8).collect()) }
                };
                let zero = |v: Vec<i32>, unsigned: bool| -> Option<Tensor> {
                    let len = v.len();
                    let shape: &[usize] = if len == 1 { &[] } else { &[len] };
                    quantized(v.into_iter().map(|z| z as u8).collect(), shape, unsigned)
                };
                let wz_t = if per_channel { wz.clone() } else { vec![wz[0]] };
                let scale_shape = if per_channel { vec![m] } else { vec![] };
                let inputs = [
                    quantized(xb, &shape(c.x), x_u8),
                    t(&[], vec![x_scale]),
                    zero(vec![xz], x_u8),
                    quantized(wb, &shape(c.w), w_u8),
                    t(&scale_shape, w_scales.clone()),
                    zero(wz_t, w_u8),
                    t(&[], vec![y_scale]),
                    zero(vec![yz], y_u8),
                    t(&[m], bias),
                ];
                let spatial = if c.one_d { 1 } else { 2 };
                let geom = Geometry {
                    kernel: None,
                    strides: Some(c.strides[2 - spatial..].to_vec()),
                    dilations: Some(c.dilations[2 - spatial..].to_vec()),
                    pads: Some(if c.one_d { vec![c.pads[1], c.pads[3]] } else { c.pads.to_vec() }),
                    auto_pad: AutoPad::NotSet,
                    group: c.group,
                    ceil_mode: false,
                };
                let y = run(&QLinearConv::new(geom), &inputs).unwrap();
                let got: Vec<i32> = if y_u8 {
                    y[0].as_slice::<u8>().unwrap().iter().map(|&v| v as i32).collect()
                } else {
                    y[0].as_slice::<i8>().unwrap().iter().map(|&v| v as i32).collect()
                };
                assert_eq!(got, want, "case {ci} variant {variant}: x {:?} w {:?}", c.x, c.w);
            }
        }
    }
}
