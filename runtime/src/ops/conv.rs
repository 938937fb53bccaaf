//! Conv and ConvTranspose over NCHW (1-D convs run as 2-D with H = 1). Conv is an implicit
//! GEMM on the f32 kernels (the patches of a few output pixels packed straight from the input
//! into one of the kernel's panels, never a whole patch matrix), with direct paths for
//! depthwise kernels and for 1×1 kernels (a matrix product over the pixels as they lie,
//! which measured faster than packing them on the small channel counts of mobile CNNs);
//! ConvTranspose is a GEMM + col2im.

use super::matmul::{Matrix, sgemm};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, numel, optional, out, required, unsupported_attr};
use crate::error::{Result, bail, ensure};
use crate::kernels::sgemm::{GemmF32, best_gemm_f32};
use crate::tensor::{DataType, Tensor};
use std::ops::{AddAssign, Mul, Range};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] =
    &[("Conv", |c| Ok(Box::new(Conv { geom: Geometry::import(c, false)? }))), ("ConvTranspose", import_conv_transpose)];

/// How the auto_pad attribute places padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// Window attributes shared by convolutions and pools.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    pub kernel: Option<Vec<usize>>,
    pub strides: Option<Vec<usize>>,
    pub dilations: Option<Vec<usize>>,
    pub pads: Option<Vec<usize>>,
    pub auto_pad: AutoPad,
    pub group: usize,
    pub ceil_mode: bool,
}

fn positive(v: Option<Vec<i64>>, name: &str, min: i64) -> Result<Option<Vec<usize>>> {
    v.map(|v| {
        v.iter()
            .map(|&x| {
                ensure!(x >= min && x <= 1 << 20, "attribute {name} value {x} is out of range");
                Ok(x as usize)
            })
            .collect()
    })
    .transpose()
}

/// One spatial axis: (input, kernel, stride, dilation, pad_begin, pad_end).
pub(crate) type Axis = (usize, usize, usize, usize, usize, usize);

impl Geometry {
    pub fn import(c: &ImportCtx, pooling: bool) -> Result<Geometry> {
        let auto_pad = match c.attrs.string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => bail!("auto_pad '{other}' is not a valid value"),
        };
        let kernel = positive(c.attrs.ints_opt("kernel_shape")?, "kernel_shape", 1)?;
        if pooling && kernel.is_none() {
            bail!("attribute kernel_shape is required");
        }
        Ok(Geometry {
            kernel,
            strides: positive(c.attrs.ints_opt("strides")?, "strides", 1)?,
            dilations: positive(c.attrs.ints_opt("dilations")?, "dilations", 1)?,
            pads: positive(c.attrs.ints_opt("pads")?, "pads", 0)?,
            auto_pad,
            group: c.attrs.int("group", 1)?.clamp(0, 1 << 20) as usize,
            ceil_mode: c.attrs.int("ceil_mode", 0)? != 0,
        })
    }

    /// Per spatial axis geometry for input spatial dims `input` and kernel dims `kernel`.
    pub fn axes(&self, input: &[usize], kernel: &[usize]) -> Result<Vec<Axis>> {
        let n = input.len();
        ensure!(n == 1 || n == 2, "only 1-D and 2-D windows are supported, got {n} spatial dims");
        ensure!(kernel.len() == n, "kernel {kernel:?} does not match {n} spatial dims");
        // A weight's window dims are data, not an attribute: a zero one has no window.
        ensure!(kernel.iter().all(|&k| k >= 1), "kernel {kernel:?} has an empty spatial dim");
        let pick = |v: &Option<Vec<usize>>, len: usize, default: usize, what: &str| -> Result<Vec<usize>> {
            match v {
                Some(v) => {
                    ensure!(v.len() == len, "{what} {v:?} should have {len} values");
                    Ok(v.clone())
                }
                None => Ok(vec![default; len]),
            }
        };
        let strides = pick(&self.strides, n, 1, "strides")?;
        let dil = pick(&self.dilations, n, 1, "dilations")?;
        let pads = pick(&self.pads, 2 * n, 0, "pads")?;
        (0..n)
            .map(|i| {
                let span = (kernel[i] - 1) * dil[i] + 1;
                let (pb, pe) = match self.auto_pad {
                    AutoPad::NotSet => (pads[i], pads[i + n]),
                    AutoPad::Valid => (0, 0),
                    AutoPad::SameUpper | AutoPad::SameLower => {
                        let out = input[i].div_ceil(strides[i]);
                        // An empty input gets no pads, so its window does not fit (refused below).
                        let total = out.checked_sub(1).map_or(0, |last| (last * strides[i] + span).saturating_sub(input[i]));
                        if self.auto_pad == AutoPad::SameUpper { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) }
                    }
                };
                Ok((input[i], kernel[i], strides[i], dil[i], pb, pe))
            })
            .collect()
    }
}

/// Output length of one axis of a sliding window.
pub(crate) fn out_len(&(input, kernel, stride, dil, pb, pe): &Axis, ceil_mode: bool) -> Result<usize> {
    let span = (kernel - 1) * dil + 1;
    let padded = input + pb + pe;
    ensure!(padded >= span, "window of {span} does not fit input {input} with pads ({pb}, {pe})");
    let mut n = if ceil_mode { (padded - span).div_ceil(stride) + 1 } else { (padded - span) / stride + 1 };
    // With ceil_mode the last window must still start inside the input or its begin pad.
    if ceil_mode && (n - 1) * stride >= input + pb {
        n -= 1;
    }
    Ok(n)
}

/// Views `[N, C, L]` as `[N, C, 1, L]` so 1-D convs share the 2-D code.
fn as_2d(shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match *shape {
        [n, c, l] => Ok((n, c, 1, l)),
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => bail!("expected an [N, C, L] or [N, C, H, W] input, got {shape:?}"),
    }
}

/// One convolution's sizes in 2-D form (1-D convs get H = 1, a kernel of height 1).
#[derive(Debug)]
pub(crate) struct ConvDims {
    pub batch: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub ah: Axis,
    pub aw: Axis,
    pub oh: usize,
    pub ow: usize,
    pub group: usize,
    /// The output shape, `[N, M, (OH,) OW]`.
    pub shape: Vec<usize>,
}

impl ConvDims {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.group
    }

    /// Output channels per group.
    pub fn mg(&self) -> usize {
        self.m / self.group
    }

    /// 1×1 kernel, stride 1, no padding: the conv is a matrix product over pixels.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.ah.2 == 1 && self.aw.2 == 1 && self.ah.4 + self.ah.5 + self.aw.4 + self.aw.5 == 0
    }

    /// One input and one output channel per group.
    pub fn depthwise(&self) -> bool {
        self.cg() == 1 && self.mg() == 1
    }
}

impl Geometry {
    /// Checks input `x` against weight `w` (`[M, C/group, (kh,) kw]`) and sizes the conv.
    pub(crate) fn conv(&self, x: &[usize], w: &[usize]) -> Result<ConvDims> {
        ensure!(x.len() == w.len() && x.len() >= 3, "input {x:?} and weight {w:?} ranks do not fit a convolution");
        let group = self.group;
        ensure!(
            group >= 1 && x[1].is_multiple_of(group) && w[0].is_multiple_of(group),
            "group {group} does not divide input channels {} and output channels {}",
            x[1],
            w[0]
        );
        ensure!(w[1] * group == x[1], "weight {w:?} expects {} input channels, input {x:?} has {}", w[1] * group, x[1]);
        if let Some(k) = &self.kernel {
            ensure!(k[..] == w[2..], "kernel_shape {k:?} disagrees with weight {w:?}");
        }
        let axes = self.axes(&x[2..], &w[2..])?;
        let mut shape = vec![x[0], w[0]];
        for a in &axes {
            shape.push(out_len(a, false)?);
        }
        let (batch, c, h, wd) = as_2d(x)?;
        let (m, _, kh, kw) = as_2d(w)?;
        // 1-D: a fake H axis of size 1, kernel 1, stride 1, no pads.
        let (ah, aw) = if axes.len() == 1 { ((1, 1, 1, 1, 0, 0), axes[0]) } else { (axes[0], axes[1]) };
        let (oh, ow) = (out_len(&ah, false)?, out_len(&aw, false)?);
        Ok(ConvDims { batch, c, h, w: wd, m, kh, kw, ah, aw, oh, ow, group, shape })
    }
}

/// `Conv(X, W, B?)`.
#[derive(Debug)]
pub struct Conv {
    geom: Geometry,
}

impl Conv {
    /// Window attributes (the integer conv made from this one by fusion takes them).
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geom
    }
}

impl Op for Conv {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * super::per_filter(inputs, 1), false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(x, &[DataType::F32], "input X")?;
        expect_dtype(w, &[DataType::F32], "weight W")?;
        let d = self.geom.conv(&x.shape, &w.shape)?;
        if let Some(b) = optional(inputs, 2) {
            ensure!(b.shape == [w.shape[0]], "bias {:?} should be [{}]", b.shape, w.shape[0]);
        }
        Ok(vec![Fact::new(DataType::F32, d.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 1)?);
        let d = self.geom.conv(x.shape(), w.shape())?;
        let (c, h, wd, m, kh, kw, oh, ow) = (d.c, d.h, d.w, d.m, d.kh, d.kw, d.oh, d.ow);
        let (cg, mg) = (d.cg(), d.mg());
        let (xv, wv) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?);
        let bias = optional(inputs, 2).map(|b| b.as_slice::<f32>()).transpose()?;
        let mut y = pool.filled(numel(&d.shape)?, 0f32);
        for b in 0..d.batch {
            if d.depthwise() {
                // One plane per channel: threads take channels.
                let (planes, yb) = (&xv[b * c * h * wd..][..c * h * wd], &mut y[b * m * oh * ow..][..m * oh * ow]);
                crate::threads::for_row_ranges(yb, oh * ow, 1, m * oh * ow * kh * kw, |c0, ys| {
                    let mut padded = Vec::new();
                    for (ch, yc) in (c0..).zip(ys.chunks_exact_mut((oh * ow).max(1))) {
                        depthwise_plane(&planes[ch * h * wd..][..h * wd], &wv[ch * kh * kw..][..kh * kw], &d, &mut padded, yc);
                    }
                });
            } else {
                for gi in 0..d.group {
                    let xg = &xv[(b * c + gi * cg) * h * wd..(b * c + (gi + 1) * cg) * h * wd];
                    let yg = &mut y[(b * m + gi * mg) * oh * ow..(b * m + (gi + 1) * mg) * oh * ow];
                    let wg = &wv[gi * mg * cg * kh * kw..(gi + 1) * mg * cg * kh * kw];
                    if d.pointwise() {
                        sgemm(1.0, Matrix::dense(wg, mg, cg), Matrix::dense(xg, cg, h * wd), 0.0, yg);
                    } else {
                        conv_gemm(best_gemm_f32(), xg, Matrix::dense(wg, mg, cg * kh * kw), &d, yg);
                    }
                }
            }
            if let Some(bias) = bias {
                for (mi, &bv) in bias.iter().enumerate() {
                    y[(b * m + mi) * oh * ow..(b * m + mi + 1) * oh * ow].iter_mut().for_each(|v| *v += bv);
                }
            }
        }
        Ok(vec![out(d.shape, y)?])
    }
}

/// One group's convolution `y[M, oh·ow] = w[M, C·kh·kw] · patches(x)` as an implicit GEMM:
/// the patches of a block of output pixels are packed straight from the input planes `x` (`C`
/// planes of `h × w`) into the kernel's panels, and every row tile of `w` runs against each
/// panel. A block is as many panels as fit a share of L2, so that packing reads whole input
/// rows in order. Threads take blocks of pixels (splitting the output channels instead would
/// make every thread pack every panel); a pixel's result is the same for any count.
fn conv_gemm(kernel: &dyn GemmF32, x: &[f32], w: Matrix, d: &ConvDims, y: &mut [f32]) {
    const BLOCK_BYTES: usize = 192 * 1024;
    let (pixels, k, nr, mr) = (d.oh * d.ow, w.cols, kernel.nr(), kernel.mr());
    if pixels == 0 || w.rows == 0 {
        return;
    }
    let block = nr * (BLOCK_BYTES / (k * nr * size_of::<f32>()).max(1)).max(1);
    crate::threads::for_column_ranges(y, pixels, block, w.rows * pixels * k, |first, y| {
        let (mut panels, mut runs, mut tile) = (Vec::new(), Vec::new(), vec![0f32; mr * nr]);
        let end = first + y.row(0).len();
        for b0 in (first..end).step_by(block) {
            let b1 = end.min(b0 + block);
            panels.resize((b1 - b0).div_ceil(nr) * k * nr, 0.0);
            pack_patches(x, d, b0..b1, nr, &mut runs, &mut panels);
            for (panel, p0) in panels.chunks_exact(k * nr).zip((b0..b1).step_by(nr)) {
                let cols = nr.min(b1 - p0);
                for r0 in (0..w.rows).step_by(mr) {
                    let a = Matrix { data: &w.data[r0 * w.row_stride..], rows: mr.min(w.rows - r0), ..w };
                    kernel.tile(a, panel, &mut tile, nr);
                    for (r, values) in tile.chunks_exact(nr).take(a.rows).enumerate() {
                        copy_short(&values[..cols], &mut y.row(r0 + r)[p0 - first..][..cols]);
                    }
                }
            }
        }
    });
}

/// The patches of the output pixels `pixels` as GEMM panels of `nr` pixels, `[panel][C·kh·kw][nr]`
/// (columns past the last pixel zero): row `(ci·kh + ki)·kw + kj` of a panel holds, per pixel,
/// the input value under tap `(ki, kj)` of channel `ci`, or 0 in the padding. Row by row, so
/// that the panels' pixels of one output row read one input row in order: a copy per tap and
/// panel at stride 1. `runs` is scratch space.
fn pack_patches(
    x: &[f32],
    d: &ConvDims,
    pixels: Range<usize>,
    nr: usize,
    runs: &mut Vec<(usize, usize, usize, usize)>,
    panels: &mut [f32],
) {
    let (sh, dh, ph) = (d.ah.2, d.ah.3, d.ah.4 as isize);
    let (sw, dw, pw) = (d.aw.2, d.aw.3, d.aw.4 as isize);
    let (h, w, plane, k) = (d.h as isize, d.w as isize, d.h * d.w, d.cg() * d.kh * d.kw);
    // Runs of pixels within one output row and one panel: (offset of their first value in a
    // panel row, length, oy, ox).
    runs.clear();
    let mut p = pixels.start;
    while p < pixels.end {
        let (j, oy, ox) = (p - pixels.start, p / d.ow, p % d.ow);
        let len = (d.ow - ox).min(pixels.end - p).min(nr - j % nr);
        runs.push((j / nr * k * nr + j % nr, len, oy, ox));
        p += len;
    }
    // The last panel's columns past the pixels.
    let cols = pixels.len() % nr;
    if cols != 0 {
        let last = panels.len() - k * nr;
        panels[last..].chunks_exact_mut(nr).for_each(|row| row[cols..].fill(0.0));
    }
    let mut row = 0;
    for channel in x.chunks_exact(plane.max(1)).take(d.cg()) {
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                for &(at, len, oy, ox) in runs.iter() {
                    let out = &mut panels[at + row * nr..][..len];
                    let iy = (oy * sh + ki * dh) as isize - ph;
                    if iy < 0 || iy >= h {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &channel[iy as usize * d.w..][..d.w];
                    let ix0 = (ox * sw + kj * dw) as isize - pw;
                    if sw == 1 && ix0 >= 0 && ix0 + len as isize <= w {
                        // Inside the row (most taps): one short copy.
                        copy_short(&line[ix0 as usize..][..len], out);
                    } else if sw == 1 {
                        // In bounds for t in lo..hi: 0 ≤ ix0 + t < w (none when the whole run
                        // lies in the padding, left or right of the row).
                        let (lo, hi) = ((-ix0).clamp(0, len as isize) as usize, (w - ix0).clamp(0, len as isize) as usize);
                        let hi = hi.max(lo);
                        out[..lo].fill(0.0);
                        if hi > lo {
                            copy_short(&line[(ix0 + lo as isize) as usize..][..hi - lo], &mut out[lo..hi]);
                        }
                        out[hi..].fill(0.0);
                    } else {
                        for (t, v) in out.iter_mut().enumerate() {
                            let ix = ix0 + (t * sw) as isize;
                            *v = if ix >= 0 && ix < w { line[ix as usize] } else { 0.0 };
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// `dst = src` for the few values of a panel row, in 8-value moves: `copy_from_slice` calls
/// `memmove`, whose call costs more than copying 16 values.
#[inline(always)]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    let (mut src8, mut dst8) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
    for (s, d) in (&mut src8).zip(&mut dst8) {
        d.copy_from_slice(<&[f32; 8]>::try_from(s).expect("8 values"));
    }
    for (s, d) in src8.remainder().iter().zip(dst8.into_remainder()) {
        *d = *s;
    }
}

/// What a depthwise conv accumulates in: f32 for Conv, i32 (zero points subtracted) for
/// the integer conv.
pub(crate) trait Accumulator: Copy + Default + Mul<Output = Self> + AddAssign {}
impl<T: Copy + Default + Mul<Output = T> + AddAssign> Accumulator for T {}

crate::simd::widest_fn! {
    /// One channel convolved with its own `kh × kw` filter (depthwise conv), accumulated
    /// into `y`. The plane is first copied into `padded` with zero borders, each padded row
    /// split into its `stride` phases (`[q, q + s, q + 2s, …]` for `q < s`), so that every
    /// tap at any stride is a plain contiguous run over one phase of one row.
    pub(crate) fn depthwise_plane<T: Accumulator>(x: &[T], k: &[T], d: &ConvDims, padded: &mut Vec<T>, y: &mut [T]) {
        let (top, left) = (d.ah.4, d.aw.4);
        let (sh, dh, sw, dw, ow) = (d.ah.2, d.ah.3, d.aw.2, d.aw.3, d.ow);
        // A padded row is `wp` values; split, `sw` phases of `phase` values each.
        let wp = d.w + left + d.aw.5;
        let phase = wp.div_ceil(sw);
        padded.clear();
        padded.resize((d.h + top + d.ah.5) * sw * phase, T::default());
        for (dst, src) in padded[top * sw * phase..].chunks_exact_mut(sw * phase).zip(x.chunks_exact(d.w)) {
            if sw == 1 {
                dst[left..left + d.w].copy_from_slice(src);
                continue;
            }
            for (q, dst) in dst.chunks_exact_mut(phase).enumerate() {
                // Padded column q + i·sw is input column q + i·sw − left, where in bounds.
                for (i, v) in dst.iter_mut().enumerate() {
                    if let Some(&x) = (q + i * sw).checked_sub(left).and_then(|c| src.get(c)) {
                        *v = x;
                    }
                }
            }
        }
        for (oy, dst) in y.chunks_exact_mut(ow).enumerate().take(d.oh) {
            for ki in 0..d.kh {
                let row = &padded[(oy * sh + ki * dh) * sw * phase..][..sw * phase];
                for (kj, &kv) in k[ki * d.kw..][..d.kw].iter().enumerate() {
                    // Tap column kj·dw: index col / sw of phase col % sw.
                    let col = kj * dw;
                    let start = if sw == 1 { col } else { col % sw * phase + col / sw };
                    for (o, &v) in dst.iter_mut().zip(&row[start..][..ow]) {
                        *o += kv * v;
                    }
                }
            }
        }
    }
}

/// `ConvTranspose(X, W, B?)`.
#[derive(Debug)]
pub struct ConvTranspose {
    geom: Geometry,
    output_padding: Option<Vec<usize>>,
    output_shape: Option<Vec<usize>>,
}

fn import_conv_transpose(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let geom = Geometry::import(c, false)?;
    if geom.auto_pad != AutoPad::NotSet {
        return Err(unsupported_attr(format!("ConvTranspose auto_pad {:?}", geom.auto_pad)));
    }
    Ok(Box::new(ConvTranspose {
        geom,
        output_padding: positive(c.attrs.ints_opt("output_padding")?, "output_padding", 0)?,
        output_shape: positive(c.attrs.ints_opt("output_shape")?, "output_shape", 0)?,
    }))
}

impl ConvTranspose {
    /// Axes with pads resolved, and the output shape.
    fn plan(&self, x: &[usize], w: &[usize]) -> Result<(Vec<Axis>, Vec<usize>)> {
        ensure!(
            x.len() == w.len() && (x.len() == 3 || x.len() == 4),
            "input {x:?} and weight {w:?} do not fit a 1-D/2-D transposed convolution"
        );
        let g = self.geom.group;
        ensure!(g >= 1 && x[1] == w[0] && x[1].is_multiple_of(g), "weight {w:?} does not match input channels {} with group {g}", x[1]);
        let mut axes = self.geom.axes(&x[2..], &w[2..])?;
        let n = axes.len();
        let mut shape = vec![x[0], w[1] * g];
        for (i, a) in axes.iter_mut().enumerate() {
            let (input, k, s, d, pb, pe) = *a;
            let op = self.output_padding.as_ref().and_then(|p| p.get(i).copied()).unwrap_or(0);
            ensure!(input >= 1, "input {x:?} has an empty spatial dim, which a transposed convolution cannot spread");
            let full = s * (input - 1) + op + (k - 1) * d + 1;
            let len = match &self.output_shape {
                Some(os) => {
                    let want = *os.get(os.len().saturating_sub(n) + i).unwrap_or(&0);
                    ensure!(want <= full, "output_shape {os:?} is larger than the {full} the input allows");
                    let total = full - want;
                    *a = (input, k, s, d, total / 2, total - total / 2);
                    want
                }
                None => {
                    ensure!(full >= pb + pe, "pads ({pb}, {pe}) exceed the output length {full}");
                    full - pb - pe
                }
            };
            shape.push(len);
        }
        Ok((axes, shape))
    }
}

impl Op for ConvTranspose {
    fn work(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> super::Work {
        // Each input element scatters into a `M/g × k…` window.
        let x: usize = inputs[0].map_or(0, |x| x.shape.iter().product());
        super::Work::macs(x * super::per_filter(inputs, 1), false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(x, &[DataType::F32], "input X")?;
        expect_dtype(w, &[DataType::F32], "weight W")?;
        Ok(vec![Fact::new(DataType::F32, self.plan(&x.shape, &w.shape)?.1)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, w) = (required(inputs, 0)?, required(inputs, 1)?);
        let (axes, shape) = self.plan(x.shape(), w.shape())?;
        let (n, c, h, wd) = as_2d(x.shape())?;
        let (_, mg, kh, kw) = as_2d(w.shape())?;
        let (ah, aw) = if axes.len() == 1 { ((1, 1, 1, 1, 0, 0), axes[0]) } else { (axes[0], axes[1]) };
        let (oh, ow) = if shape.len() == 3 { (1, shape[2]) } else { (shape[2], shape[3]) };
        let g = self.geom.group;
        let cg = c / g;
        let m = mg * g;
        let (xv, wv) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?);
        let mut y = pool.filled(numel(&shape)?, 0f32);
        let mut col = vec![0f32; mg * kh * kw * h * wd];
        for b in 0..n {
            for gi in 0..g {
                let xg = &xv[(b * c + gi * cg) * h * wd..(b * c + (gi + 1) * cg) * h * wd];
                let wg = &wv[gi * cg * mg * kh * kw..(gi + 1) * cg * mg * kh * kw];
                // cols[mg·kh·kw, h·w] = Wgᵀ × Xg, then scatter-add each column into the output.
                sgemm(1.0, Matrix::dense(wg, cg, mg * kh * kw).t(), Matrix::dense(xg, cg, h * wd), 0.0, &mut col);
                for mi in 0..mg {
                    let plane = &mut y[(b * m + gi * mg + mi) * oh * ow..(b * m + gi * mg + mi + 1) * oh * ow];
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let row = &col[((mi * kh + ki) * kw + kj) * h * wd..][..h * wd];
                            for iy in 0..h {
                                let oy = (iy * ah.2 + ki * ah.3) as isize - ah.4 as isize;
                                if oy < 0 || oy >= oh as isize {
                                    continue;
                                }
                                for ix in 0..wd {
                                    let ox = (ix * aw.2 + kj * aw.3) as isize - aw.4 as isize;
                                    if ox >= 0 && ox < ow as isize {
                                        plane[oy as usize * ow + ox as usize] += row[iy * wd + ix];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if let Some(bias) = optional(inputs, 2) {
                for (mi, &bv) in bias.as_slice::<f32>()?.iter().enumerate().take(m) {
                    y[(b * m + mi) * oh * ow..(b * m + mi + 1) * oh * ow].iter_mut().for_each(|v| *v += bv);
                }
            }
        }
        Ok(vec![out(shape, y)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn geom(pads: [usize; 4], strides: [usize; 2], group: usize) -> Geometry {
        Geometry {
            kernel: None,
            strides: Some(strides.to_vec()),
            dilations: None,
            pads: Some(pads.to_vec()),
            auto_pad: AutoPad::NotSet,
            group,
            ceil_mode: false,
        }
    }

    /// Direct 2-D convolution, the definition, as the reference; `pads` in ONNX's order
    /// (top, left, bottom, right).
    fn naive(
        x: &[f32],
        xs: [usize; 4],
        w: &[f32],
        ws: [usize; 4],
        pads: [usize; 4],
        stride: usize,
        group: usize,
    ) -> (Vec<usize>, Vec<f32>) {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let oh = (h + pads[0] + pads[2] - kh) / stride + 1;
        let ow = (wd + pads[1] + pads[3] - kw) / stride + 1;
        let mg = m / group;
        let mut y = vec![0f32; n * m * oh * ow];
        for b in 0..n {
            for mo in 0..m {
                let gi = mo / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ci in 0..cg {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let iy = (oy * stride + ki) as isize - pads[0] as isize;
                                    let ix = (ox * stride + kj) as isize - pads[1] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                        acc += x[((b * c + gi * cg + ci) * h + iy as usize) * wd + ix as usize]
                                            * w[((mo * cg + ci) * kh + ki) * kw + kj];
                                    }
                                }
                            }
                        }
                        y[((b * m + mo) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (vec![n, m, oh, ow], y)
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) % 17) as f32 / 8.0 - 1.0).collect()
    }

    #[test]
    fn conv_paths_match_definition() {
        // (x shape, w shape, pads, stride, group): general, pointwise, depthwise, strided grouped;
        // then implicit GEMMs of many panels (output rows split across panels, a short last
        // panel), of several pixel blocks (k = 576), strided with odd sizes, and a depthwise conv
        // large enough to split its channels, each also on 3 threads; then pads wider than the
        // kernel, so that whole runs of output pixels read only padding (found by fuzzing:
        // a run right of the input indexed past its row).
        type Case = ([usize; 4], [usize; 4], [usize; 4], usize, usize);
        let cases: &[Case] = &[
            ([1, 3, 5, 6], [4, 3, 3, 3], [1; 4], 1, 1),
            ([2, 4, 4, 4], [6, 4, 1, 1], [0; 4], 1, 1),
            ([1, 4, 7, 5], [4, 1, 3, 3], [1; 4], 2, 4),
            ([1, 4, 6, 6], [6, 2, 3, 3], [1; 4], 2, 2),
            ([1, 3, 4, 4], [3, 1, 5, 5], [2; 4], 1, 3),
            ([1, 5, 23, 41], [13, 5, 3, 3], [1; 4], 1, 1),
            ([1, 64, 9, 40], [7, 64, 3, 3], [1; 4], 1, 1),
            ([2, 6, 17, 19], [9, 6, 3, 3], [1; 4], 2, 1),
            ([1, 64, 48, 48], [64, 1, 3, 3], [1; 4], 1, 64),
            ([1, 2, 5, 6], [3, 2, 3, 3], [1, 1, 1, 17], 1, 1),
            ([1, 2, 5, 6], [3, 2, 3, 3], [7, 9, 6, 2], 1, 1),
            ([1, 2, 5, 6], [3, 2, 3, 3], [1, 8, 5, 11], 2, 1),
            ([1, 4, 5, 6], [4, 1, 3, 3], [1, 1, 1, 17], 1, 4),
        ];
        for &(xs, ws, pads, stride, group) in cases {
            let x = pseudo(xs.iter().product(), 1);
            let w = pseudo(ws.iter().product(), 2);
            let (shape, expected) = naive(&x, xs, &w, ws, pads, stride, group);
            let op = Conv { geom: geom(pads, [stride; 2], group) };
            for threads in [1, 3] {
                let y = crate::threads::with(threads, || run(&op, &[f32t(&xs, &x), f32t(&ws, &w)])).unwrap();
                assert_close(&y[0], &shape, &expected);
            }
        }
    }

    #[test]
    fn conv1d_with_bias() {
        let op = Conv {
            geom: Geometry {
                kernel: None,
                strides: None,
                dilations: Some(vec![2]),
                pads: Some(vec![1, 1]),
                auto_pad: AutoPad::NotSet,
                group: 1,
                ceil_mode: false,
            },
        };
        let y = run(&op, &[f32t(&[1, 1, 4], &[1., 2., 3., 4.]), f32t(&[1, 1, 2], &[1., 10.]), f32t(&[1], &[0.5])]).unwrap();
        // Taps at i-1 and i+1: [0+20, 1+30, 2+40, 3+0].
        assert_close(&y[0], &[1, 1, 4], &[20.5, 31.5, 42.5, 3.5]);
        let err = run(&op, &[f32t(&[1, 2, 4], &[0.; 8]), f32t(&[1, 1, 2], &[1., 1.])]).unwrap_err().to_string();
        assert!(err.contains("input channels"), "{err}");
    }

    #[test]
    fn conv_transpose_stride2() {
        let op = ConvTranspose { geom: geom([0; 4], [2, 2], 1), output_padding: None, output_shape: None };
        let y = run(&op, &[f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]), f32t(&[1, 1, 2, 2], &[1., 1., 1., 1.])]).unwrap();
        assert_close(&y[0], &[1, 1, 4, 4], &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
        // Overlapping windows add up; pads crop.
        let op = ConvTranspose { geom: geom([1, 1, 1, 1], [1, 1], 1), output_padding: None, output_shape: None };
        let y = run(&op, &[f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]), f32t(&[1, 1, 3, 3], &[1.; 9])]).unwrap();
        assert_close(&y[0], &[1, 1, 2, 2], &[10., 10., 10., 10.]);
    }

    #[test]
    fn empty_windows_and_inputs_are_refused_by_name() {
        // Found by fuzzing the C ABI: a weight `[8, 8, 0, 1]` (a window dim of 0) underflowed
        // the window's span; an empty spatial input did the same in a transposed conv.
        let conv = Conv { geom: geom([0; 4], [1, 1], 1) };
        let err = run(&conv, &[f32t(&[1, 2, 3, 3], &[0.; 18]), f32t(&[2, 2, 0, 1], &[])]).unwrap_err().to_string();
        assert!(err.contains("empty spatial dim"), "{err}");
        let same = Conv { geom: Geometry { auto_pad: AutoPad::SameUpper, ..geom([0; 4], [1, 1], 1) } };
        let err = run(&same, &[f32t(&[1, 1, 0, 2], &[]), f32t(&[1, 1, 3, 3], &[1.; 9])]).unwrap_err().to_string();
        assert!(err.contains("does not fit input 0"), "{err}");
        let transposed = ConvTranspose { geom: geom([0; 4], [2, 2], 1), output_padding: None, output_shape: None };
        let err = run(&transposed, &[f32t(&[1, 1, 0, 2], &[]), f32t(&[1, 1, 2, 2], &[1.; 4])]).unwrap_err().to_string();
        assert!(err.contains("empty spatial dim"), "{err}");
    }
}
