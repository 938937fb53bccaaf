//! Resize (and the older Upsample): nearest on any axes, linear on any axes (separably).

use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, numel, optional, out, required, strides, unsupported_attr};
use crate::error::{Result, bail, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("Resize", import), ("Upsample", import)];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Nearest,
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// `Resize(X, roi?, scales?, sizes?)`.
#[derive(Debug)]
pub struct Resize {
    mode: Mode,
    coord: Coord,
    rounding: Rounding,
    /// Input index of `scales` (1 for Upsample and opset-10 Resize, 2 after).
    scales_input: usize,
}

fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let mode = match c.attrs.string("mode", "nearest")?.as_str() {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" => Mode::Linear,
        other => return Err(unsupported_attr(format!("Resize mode '{other}'"))),
    };
    let legacy = c.opset < 11;
    let coord = match c.attrs.string("coordinate_transformation_mode", if legacy { "asymmetric" } else { "half_pixel" })?.as_str() {
        "half_pixel" => Coord::HalfPixel,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        other => return Err(unsupported_attr(format!("Resize coordinate_transformation_mode '{other}'"))),
    };
    let rounding = match c.attrs.string("nearest_mode", if legacy { "floor" } else { "round_prefer_floor" })?.as_str() {
        "round_prefer_floor" => Rounding::RoundPreferFloor,
        "round_prefer_ceil" => Rounding::RoundPreferCeil,
        "floor" => Rounding::Floor,
        "ceil" => Rounding::Ceil,
        other => return Err(unsupported_attr(format!("Resize nearest_mode '{other}'"))),
    };
    if c.attrs.int("antialias", 0)? != 0 || c.attrs.has("axes") {
        return Err(unsupported_attr("Resize antialias / axes".into()));
    }
    if c.attrs.string("keep_aspect_ratio_policy", "stretch")? != "stretch" {
        return Err(unsupported_attr("Resize keep_aspect_ratio_policy".into()));
    }
    Ok(Box::new(Resize { mode, coord, rounding, scales_input: if legacy { 1 } else { 2 } }))
}

impl Resize {
    /// Output shape, and per axis the scale and the resized length before flooring (the
    /// output length given as a size), which coordinate mapping uses.
    fn plan(&self, x: &[usize], scales: Option<&Fact>, sizes: Option<&Fact>) -> Result<(Vec<usize>, Vec<f32>, Vec<f32>)> {
        let scales = scales.map(|f| f.const_f32s("scales")).transpose()?.filter(|s| !s.is_empty());
        let sizes = sizes.map(|f| f.const_i64s("sizes")).transpose()?.filter(|s| !s.is_empty());
        match (scales, sizes) {
            (Some(s), None) => {
                ensure!(s.len() == x.len(), "scales {s:?} do not match rank {}", x.len());
                ensure!(s.iter().all(|&v| v > 0.0 && v.is_finite()), "scales {s:?} must be positive");
                let widths: Vec<f32> = x.iter().zip(&s).map(|(&d, &k)| d as f32 * k).collect();
                let shape: Vec<usize> = widths.iter().map(|w| w.floor() as usize).collect();
                numel(&shape)?;
                Ok((shape, s, widths))
            }
            (None, Some(z)) => {
                ensure!(z.len() == x.len() && z.iter().all(|&v| v >= 0), "sizes {z:?} do not fit rank {}", x.len());
                let shape: Vec<usize> = z.iter().map(|&v| v as usize).collect();
                numel(&shape)?;
                let s = shape.iter().zip(x).map(|(&o, &i)| if i == 0 { 1.0 } else { o as f32 / i as f32 }).collect();
                let widths = shape.iter().map(|&o| o as f32).collect();
                Ok((shape, s, widths))
            }
            _ => bail!("exactly one of scales and sizes must be given"),
        }
    }

    /// Input coordinate of output index `o` on an axis of `len_in` → `len_out` (`width`
    /// before flooring).
    fn source(&self, o: usize, scale: f32, len_in: usize, len_out: usize, width: f32) -> f32 {
        let o = o as f32;
        match self.coord {
            Coord::HalfPixel => (o + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel => {
                if len_out > 1 {
                    (o + 0.5) / scale - 0.5
                } else {
                    0.0
                }
            }
            // Over the resized length before flooring, as onnx's reference does (onnxruntime
            // takes the floored one): the two differ when a scale makes a fractional length
            // (ONNX's test_resize_downsample_scales_linear_align_corners: 4 × 0.6).
            Coord::AlignCorners => {
                if width != 1.0 {
                    o * (len_in as f32 - 1.0) / (width - 1.0)
                } else {
                    0.0
                }
            }
            Coord::Asymmetric => o / scale,
            Coord::TfHalfPixelForNn => (o + 0.5) / scale,
        }
    }

    fn nearest(&self, x: f32, len_in: usize) -> usize {
        let i = match self.rounding {
            Rounding::RoundPreferFloor => {
                if x.fract() == 0.5 {
                    x.floor()
                } else {
                    x.round()
                }
            }
            Rounding::RoundPreferCeil => x.round(),
            Rounding::Floor => x.floor(),
            Rounding::Ceil => x.ceil(),
        };
        i.clamp(0.0, len_in as f32 - 1.0) as usize
    }
}

impl Op for Resize {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        let (shape, ..) = self.plan(&x.shape, optional(inputs, self.scales_input), optional(inputs, 3))?;
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let fact = |i: usize| optional(inputs, i).map(|t| Fact::of(std::sync::Arc::new(t.clone())));
        let (shape, scales, widths) = self.plan(x.shape(), fact(self.scales_input).as_ref(), fact(3).as_ref())?;
        if shape.contains(&0) || x.is_empty() {
            return Ok(vec![out(shape.clone(), vec![0f32; numel(&shape)?])?]);
        }
        // One axis at a time: each pass maps one axis to its new length.
        let mut cur = x.as_slice::<f32>()?.to_vec();
        let mut cur_shape = x.shape().to_vec();
        for axis in 0..shape.len() {
            if shape[axis] == cur_shape[axis] && scales[axis] == 1.0 {
                continue;
            }
            let (len_in, len_out) = (cur_shape[axis], shape[axis]);
            let inner = strides(&cur_shape)[axis];
            let outer: usize = cur_shape[..axis].iter().product();
            // Each output index reads (lo, hi, weight of hi).
            let taps: Vec<(usize, usize, f32)> = (0..len_out)
                .map(|o| {
                    let s = self.source(o, scales[axis], len_in, len_out, widths[axis]);
                    match self.mode {
                        Mode::Nearest => {
                            let i = self.nearest(s, len_in);
                            (i, i, 0.0)
                        }
                        Mode::Linear => {
                            let s = s.clamp(0.0, len_in as f32 - 1.0);
                            let lo = s.floor() as usize;
                            (lo, (lo + 1).min(len_in - 1), s - lo as f32)
                        }
                    }
                })
                .collect();
            let mut next = Vec::with_capacity(outer * len_out * inner);
            for o in 0..outer {
                let block = &cur[o * len_in * inner..(o + 1) * len_in * inner];
                if inner == 1 {
                    // The last axis: one value per tap, gathered (a copy call per value costs
                    // more than the value).
                    next.extend(taps.iter().map(|&(lo, hi, w)| if w == 0.0 { block[lo] } else { block[lo] + (block[hi] - block[lo]) * w }));
                    continue;
                }
                for &(lo, hi, w) in &taps {
                    let (a, b) = (&block[lo * inner..(lo + 1) * inner], &block[hi * inner..(hi + 1) * inner]);
                    if w == 0.0 {
                        next.extend_from_slice(a);
                    } else {
                        next.extend(a.iter().zip(b).map(|(&p, &q)| p + (q - p) * w));
                    }
                }
            }
            cur = next;
            cur_shape[axis] = len_out;
        }
        Ok(vec![out(shape, cur)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn op(mode: Mode, coord: Coord, rounding: Rounding) -> Resize {
        Resize { mode, coord, rounding, scales_input: 2 }
    }

    #[test]
    fn nearest_asymmetric_floor_doubles() {
        let r = op(Mode::Nearest, Coord::Asymmetric, Rounding::Floor);
        let y = run_const(&r, &[f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]), f32t(&[0], &[]), f32t(&[4], &[1., 1., 2., 2.])]).unwrap();
        assert_close(&y[0], &[1, 1, 4, 4], &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }

    #[test]
    fn linear_half_pixel_and_align_corners() {
        let r = op(Mode::Linear, Coord::HalfPixel, Rounding::RoundPreferFloor);
        let y = run_const(&r, &[f32t(&[1, 2], &[0., 4.]), f32t(&[0], &[]), f32t(&[2], &[1., 2.])]).unwrap();
        assert_close(&y[0], &[1, 4], &[0., 1., 3., 4.]);
        let r = op(Mode::Linear, Coord::AlignCorners, Rounding::RoundPreferFloor);
        let y = run_const(&r, &[f32t(&[1, 2], &[0., 4.]), None, None, i64t(&[2], &[1, 5])]).unwrap();
        assert_close(&y[0], &[1, 5], &[0., 1., 2., 3., 4.]);
        // A scale giving a fractional length (4 × 0.6 = 2.4, floored to 2) maps over 2.4, as
        // onnx's reference does: output 1 reads x = 3 / 1.4 (test_resize_downsample_scales_linear_align_corners).
        let x = f32t(&[1, 1, 2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let y = run_const(&r, &[x, f32t(&[0], &[]), f32t(&[4], &[1., 1., 0.6, 0.6])]).unwrap();
        assert_close(&y[0], &[1, 1, 1, 2], &[1., 1. + 3. / 1.4]);
        // A length of one reads the first value, given as a size or from a scale.
        let y = run_const(&r, &[f32t(&[1, 3], &[2., 4., 8.]), None, None, i64t(&[2], &[1, 1])]).unwrap();
        assert_close(&y[0], &[1, 1], &[2.]);
        let y = run_const(&r, &[f32t(&[1, 3], &[2., 4., 8.]), f32t(&[0], &[]), f32t(&[2], &[1., 1. / 3.])]).unwrap();
        assert_close(&y[0], &[1, 1], &[2.]);
    }
}
