//! MatMul (numpy batching) and Gemm on the f32 GEMM.

use super::{BufferPool, Fact, Importer, Op, PreparedWeights, broadcast_shapes, expect_dtype, numel, optional, out, required};
use crate::error::{Result, ensure};
pub(crate) use crate::kernels::sgemm::Matrix;
use crate::kernels::sgemm::{PackedF32, best_gemm_f32, sgemm as gemm_f32};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("MatMul", |_| Ok(Box::new(MatMul::default()))),
    ("Gemm", |c| {
        Ok(Box::new(Gemm {
            alpha: c.attrs.float("alpha", 1.0)?,
            beta: c.attrs.float("beta", 1.0)?,
            trans_a: c.attrs.int("transA", 0)? != 0,
            trans_b: c.attrs.int("transB", 0)? != 0,
        }))
    }),
];

/// `c = alpha · a × b + beta · c` with `c` dense row-major `a.rows × b.cols`.
pub(crate) fn sgemm(alpha: f32, a: Matrix, b: Matrix, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && c.len() == m * n, "gemm shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // β = 0 overwrites C (which may hold stale values, even NaN).
        c.iter_mut().for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        return;
    }
    assert!(a.in_bounds() && b.in_bounds(), "gemm operand out of bounds");
    if m <= SKINNY_ROWS && (b.col_stride == 1 || b.row_stride == 1) {
        // A decoder's token (a GEMV): B streamed once, threads taking columns. Each weight
        // read from memory is one multiply-add per row: its work counts as a packed GEMM's 16.
        // B row-major stays on one thread: threads would each stream strips of its rows, which
        // made SmolLM2's f32 decode slower on 2 threads than on 1 (28.7 against 49.6 tokens/s).
        let rows: Vec<Vec<f32>> = (0..m).map(|r| (0..k).map(|p| a.data[r * a.row_stride + p * a.col_stride]).collect()).collect();
        let work = if b.col_stride == 1 { 0 } else { 16 * n * k };
        crate::threads::for_column_ranges(c, n, 16, work, |col0, c| {
            for (r, a_row) in rows.iter().enumerate() {
                skinny_row(alpha, a_row, b, col0, beta, c.row(r));
            }
        });
        return;
    }
    // Rows of C split among the run's threads: each thread multiplies its rows of A.
    crate::threads::for_row_ranges(c, n, 16, m * n * k, |row0, c| {
        let rows = Matrix { data: &a.data[row0 * a.row_stride..], rows: c.len() / n, ..a };
        sgemm_rows(alpha, rows, b, beta, c)
    });
}

/// Rows of A up to which [`sgemm`] streams B once per row instead of packing it: packing
/// costs as much as the product there. Such products sum in the order B's layout streams it
/// (by rows, or by columns in 16 lanes), so the same values in the two layouts may differ
/// in their last bits; the packed GEMM sums alike in any layout.
const SKINNY_ROWS: usize = 4;

crate::simd::widest_fn! {
    /// `c = alpha · a × B[:, col0..] + beta · c` for one row `a` of K values, B row-major
    /// (each row's columns contiguous: axpy over its rows) or column-major (each column
    /// contiguous: a dot product per column), in 16 independent lanes either way.
    fn skinny_row(alpha: f32, a: &[f32], b: Matrix, col0: usize, beta: f32, c: &mut [f32]) {
        let n = c.len();
        let mut acc = vec![0f32; n];
        if b.col_stride == 1 {
            for (p, &x) in a.iter().enumerate() {
                let w = &b.data[p * b.row_stride + col0..][..n];
                acc.iter_mut().zip(w).for_each(|(s, &w)| *s += x * w);
            }
        } else {
            for (j, s) in acc.iter_mut().enumerate() {
                let w = &b.data[(col0 + j) * b.col_stride..][..a.len()];
                let mut lanes = [0f32; 16];
                let (ac, wc) = (a.chunks_exact(16), w.chunks_exact(16));
                let tail: f32 = ac.remainder().iter().zip(wc.remainder()).map(|(x, w)| x * w).sum();
                for (x, w) in ac.zip(wc) {
                    for l in 0..16 {
                        lanes[l] += x[l] * w[l];
                    }
                }
                *s = lanes.iter().sum::<f32>() + tail;
            }
        }
        for (c, s) in c.iter_mut().zip(acc) {
            *c = if beta == 0.0 { alpha * s } else { alpha * s + beta * *c };
        }
    }
}

/// [`sgemm`] on one thread, operands checked.
fn sgemm_rows(alpha: f32, a: Matrix, b: Matrix, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert!(a.in_bounds() && c.len() == m * n);
    // Safety: sgemm's asserts prove every index the kernel reads or writes is in bounds (a
    // range of A's rows stays in bounds).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `MatMul(a, b)` with numpy semantics (1-D promotion, broadcast batch dims). Made by fusion,
/// an operand may be read through a [`View`] (`Transpose`s and `Unsqueeze`s → MatMul:
/// attention's head split, a token-major KV cache read as `[batch, heads, past, head_dim]`),
/// which costs nothing here: the GEMM reads any strides and packs its panels the same way,
/// so the result is bit-identical to materialising the view first.
#[derive(Debug, Default)]
pub struct MatMul {
    /// Per operand (A, B): the view its input is read through.
    views: [Option<View>; 2],
}

/// A tensor read with unit axes appended (`units` of them) and then its axes permuted: what
/// any chain of `Transpose` and `Unsqueeze` makes of it, without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    units: usize,
    perm: Vec<usize>,
}

impl View {
    /// The tensor as it is, of rank `rank`.
    pub(crate) fn identity(rank: usize) -> View {
        View { units: 0, perm: (0..rank).collect() }
    }

    /// This view, then `Transpose(perm)`.
    pub(crate) fn transposed(&self, perm: &[usize]) -> View {
        View { units: self.units, perm: perm.iter().map(|&p| self.perm[p]).collect() }
    }

    /// This view, then `Unsqueeze` inserting the (ascending) output axes `axes`.
    pub(crate) fn unsqueezed(&self, axes: &[usize]) -> View {
        let source_rank = self.perm.len() - self.units;
        let (mut units, mut kept) = (self.units, self.perm.iter());
        let perm = (0..self.perm.len() + axes.len())
            .map(|a| {
                if axes.contains(&a) {
                    units += 1;
                    source_rank + units - 1
                } else {
                    *kept.next().expect("one kept axis per axis not inserted")
                }
            })
            .collect();
        View { units, perm }
    }

    /// The shape and element strides of a dense tensor of `shape` read through this view.
    fn apply(&self, shape: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
        ensure!(self.perm.len() == shape.len() + self.units, "a rank-{} operand read through view {self:?}", shape.len());
        let extended: Vec<usize> = shape.iter().copied().chain(std::iter::repeat_n(1, self.units)).collect();
        let dense = super::strides(&extended);
        Ok((self.perm.iter().map(|&p| extended[p]).collect(), self.perm.iter().map(|&p| dense[p]).collect()))
    }
}

impl MatMul {
    /// Whether both operands are read as they are (no view folded in).
    pub(crate) fn is_plain(&self) -> bool {
        self.views.iter().all(Option::is_none)
    }

    /// This MatMul with operand `which` (0 = A, 1 = B) read through `view`.
    pub(crate) fn with_view(&self, which: usize, view: View) -> MatMul {
        let mut views = self.views.clone();
        views[which] = Some(view);
        MatMul { views }
    }

    /// Operand `which` as the MatMul sees it: its shape and element strides.
    fn operand(&self, which: usize, shape: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
        match &self.views[which] {
            None => Ok((shape.to_vec(), super::strides(shape))),
            Some(view) => view.apply(shape),
        }
    }
}

fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    ensure!(!a.is_empty() && !b.is_empty(), "MatMul inputs must have rank >= 1, got {a:?} and {b:?}");
    let a2 = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2 = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    ensure!(k == k2, "inner dims differ: {a:?} × {b:?}");
    let mut shape = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        shape.push(m);
    }
    if b.len() > 1 {
        shape.push(n);
    }
    Ok(shape)
}

/// A 1-D operand promoted to a matrix (a row for A, a column for B), with its strides.
fn promote(shape: Vec<usize>, strides: Vec<usize>, is_a: bool) -> (Vec<usize>, Vec<usize>) {
    match (shape.as_slice(), is_a) {
        ([k], true) => (vec![1, *k], vec![*k, strides[0]]),
        ([k], false) => (vec![*k, 1], vec![strides[0], 1]),
        _ => (shape, strides),
    }
}

/// The strides that step an operand's batch dims over the broadcast `batch` (0 where the
/// operand repeats).
fn batch_strides(shape: &[usize], strides: &[usize], batch: &[usize]) -> Vec<usize> {
    let pad = batch.len() - shape.len();
    (0..batch.len()).map(|d| if d < pad || shape[d - pad] == 1 { 0 } else { strides[d - pad] }).collect()
}

impl Op for MatMul {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        // K: A's last dim as the MatMul reads it (through its perm).
        let k = inputs[0].and_then(|a| self.operand(0, &a.shape).ok()).and_then(|(shape, _)| shape.last().copied()).unwrap_or(0);
        super::Work::macs(super::output_elements(outputs) * k, false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(a, &[DataType::F32], "input A")?;
        expect_dtype(b, &[DataType::F32], "input B")?;
        let (a_shape, b_shape) = (self.operand(0, &a.shape)?.0, self.operand(1, &b.shape)?.0);
        Ok(vec![Fact::new(DataType::F32, matmul_shape(&a_shape, &b_shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let ((a_shape, a_strides), (b_shape, b_strides)) = (self.operand(0, a.shape())?, self.operand(1, b.shape())?);
        let shape = matmul_shape(&a_shape, &b_shape)?;
        let (av, bv) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
        let (a2, sa) = promote(a_shape, a_strides, true);
        let (b2, sb) = promote(b_shape, b_strides, false);
        let (ra, rb) = (a2.len(), b2.len());
        let (m, k, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 1]);
        let mut c = pool.overwritable(numel(&shape)?);
        if rb == 2 && self.views[0].is_none() {
            // Weights shared by every batch: one tall GEMM instead of many small ones.
            let rows = a2[..ra - 1].iter().product();
            let b = Matrix { data: bv, rows: k, cols: n, row_stride: sb[0], col_stride: sb[1] };
            sgemm(1.0, Matrix::dense(av, rows, k), b, 0.0, &mut c);
        } else {
            let batch = broadcast_shapes(&a2[..ra - 2], &b2[..rb - 2])?;
            let a_batch = batch_strides(&a2[..ra - 2], &sa[..ra - 2], &batch);
            let b_batch = batch_strides(&b2[..rb - 2], &sb[..rb - 2], &batch);
            let dense = super::strides(&batch);
            // Many small products (attention's heads): the f32 kernels read A in place through
            // its strides and pack only B, once per distinct B.
            let kernel = best_gemm_f32();
            let mut packed: Option<(usize, PackedF32)> = None;
            for (i, c) in c.chunks_exact_mut((m * n).max(1)).take(numel(&batch)?).enumerate() {
                let (mut ao, mut bo) = (0, 0);
                for d in 0..batch.len() {
                    let idx = (i / dense[d]) % batch[d];
                    ao += idx * a_batch[d];
                    bo += idx * b_batch[d];
                }
                let b = Matrix { data: &bv[bo.min(bv.len())..], rows: k, cols: n, row_stride: sb[rb - 2], col_stride: sb[rb - 1] };
                let a = Matrix { data: &av[ao.min(av.len())..], rows: m, cols: k, row_stride: sa[ra - 2], col_stride: sa[ra - 1] };
                if m <= SKINNY_ROWS && (b.row_stride == 1 || b.col_stride == 1) {
                    // A decoder's token against its cache: B streamed once, never packed.
                    sgemm(1.0, a, b, 0.0, c);
                    continue;
                }
                if packed.as_ref().is_none_or(|(at, _)| *at != bo) {
                    packed = Some((bo, PackedF32::new(kernel, b)));
                }
                let (_, b) = packed.as_ref().expect("packed above");
                gemm_f32(kernel, a, b, c);
            }
        }
        Ok(vec![out(shape, c)?])
    }
}

/// The shape of `A [.., K] × W [K, N]` for f32 activations and constant weights (the
/// weight-packed products), checking both.
pub(crate) fn weights_product_shape(a: &Fact, w: &Fact) -> Result<Vec<usize>> {
    expect_dtype(a, &[DataType::F32], "A")?;
    let [k, n] = w.shape[..] else { return Err(crate::error::Error::Op(format!("weights of shape {:?}; K × N expected", w.shape))) };
    ensure!(a.shape.len() >= 2 && a.shape.last() == Some(&k), "inner dims differ: A {:?} × B {:?}", a.shape, w.shape);
    let mut shape = a.shape.clone();
    *shape.last_mut().expect("checked above") = n;
    Ok(shape)
}

/// `MatMul(A, W)` with constant `K × N` weights, float32 or float16 (`Cast` from a float16
/// constant), or `Gemm(A, W)` with `transB` and `N × K` ones, packed once into the f32
/// kernel's panels on first use: no per-run expansion or packing, and a decoder's token
/// streams each panel's weights contiguously, panels shared among the threads. Made by the
/// planner's fusion pass, not imported.
/// Inputs: `(A, W)`, `A` of shape `[.., K]`.
#[derive(Debug, Default)]
pub struct PackedMatMul {
    /// Weights stored `N × K` (a Gemm's `transB`).
    transposed: bool,
    weights: PreparedWeights<PackedF32>,
}

impl PackedMatMul {
    /// The step for weights stored `N × K` when `transposed`, else `K × N`.
    pub(crate) fn new(transposed: bool) -> PackedMatMul {
        PackedMatMul { transposed, weights: PreparedWeights::default() }
    }

    /// K and N of the weights' shape.
    fn k_n(&self, shape: &[usize]) -> Result<(usize, usize)> {
        match (shape, self.transposed) {
            ([k, n], false) | ([n, k], true) => Ok((*k, *n)),
            _ => Err(crate::error::Error::Op(format!("weights of shape {shape:?}; 2-D expected"))),
        }
    }

    fn pack(&self, w: &Tensor) -> Result<PackedF32> {
        let (k, n) = self.k_n(w.shape())?;
        let w32 = if w.dtype() == DataType::F32 {
            std::borrow::Cow::Borrowed(w)
        } else {
            std::borrow::Cow::Owned(super::elementwise::cast(w, DataType::F32)?)
        };
        let values = w32.as_slice::<f32>()?;
        if !self.transposed {
            return Ok(PackedF32::new(best_gemm_f32(), Matrix::dense(values, k, n)));
        }
        // Stored N × K, each panel's columns are whole rows of the file: their pages go back
        // as they are packed, so that a language model's output table (113 MB for SmolLM2)
        // is not resident twice while its copy is made.
        let (bytes, width) = (w.as_le_bytes(), w.as_le_bytes().len() / w.len().max(1));
        let release = |columns: std::ops::Range<usize>| {
            if w.is_mapped() {
                crate::onnx::release_pages(&bytes[columns.start * k * width..columns.end * k * width]);
            }
        };
        Ok(PackedF32::new_reporting(best_gemm_f32(), Matrix::dense(values, n, k).t(), release))
    }
}

impl Op for PackedMatMul {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * super::input_dim(inputs, 0, -1), false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let w = required(inputs, 1)?;
        expect_dtype(w, &[DataType::F32, DataType::F16], "weights")?;
        let (k, n) = self.k_n(&w.shape)?;
        Ok(vec![Fact::new(DataType::F32, weights_product_shape(required(inputs, 0)?, &Fact::new(w.dtype, vec![k, n]))?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, w) = (required(inputs, 0)?, required(inputs, 1)?);
        let weights = self.weights.get(w, || self.pack(w))?;
        let (k, n) = self.k_n(w.shape())?;
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let rows = numel(&a.shape()[..a.shape().len() - 1])?;
        if k == 0 {
            // A sum of nothing.
            return Ok(vec![out(shape, pool.filled(rows * n, 0f32))?]);
        }
        let mut c = pool.overwritable(rows * n);
        gemm_f32(best_gemm_f32(), Matrix::dense(a.as_slice::<f32>()?, rows, k), &weights, &mut c);
        Ok(vec![out(shape, c)?])
    }
}

/// `Gemm(A, B, C?)`: `alpha · A' × B' + beta · C`.
#[derive(Debug)]
pub struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
}

impl Gemm {
    /// `Some(transB)` when the Gemm is a plain product plus bias (`alpha = beta = 1`, A not
    /// transposed), the form the integer rewrite takes.
    pub(crate) fn plain(&self) -> Option<bool> {
        (self.alpha == 1.0 && self.beta == 1.0 && !self.trans_a).then_some(self.trans_b)
    }

    fn dims(&self, a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
        ensure!(a.len() == 2 && b.len() == 2, "Gemm needs 2-D inputs, got {a:?} and {b:?}");
        let (m, k) = if self.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
        let (k2, n) = if self.trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
        ensure!(k == k2, "inner dims differ: A {a:?} (transA={}) × B {b:?} (transB={})", self.trans_a, self.trans_b);
        Ok((m, k, n))
    }
}

impl Op for Gemm {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        let k = super::input_dim(inputs, 0, if self.trans_a { 0 } else { 1 });
        super::Work::macs(super::output_elements(outputs) * k, false)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(a, &[DataType::F32], "input A")?;
        expect_dtype(b, &[DataType::F32], "input B")?;
        let (m, _, n) = self.dims(&a.shape, &b.shape)?;
        if let Some(c) = optional(inputs, 2) {
            ensure!(broadcast_shapes(&c.shape, &[m, n])? == [m, n], "C {:?} does not broadcast to [{m}, {n}]", c.shape);
        }
        Ok(vec![Fact::new(DataType::F32, vec![m, n])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let (m, k, n) = self.dims(a.shape(), b.shape())?;
        let am = Matrix::dense(a.as_slice::<f32>()?, a.shape()[0], a.shape()[1]);
        let bm = Matrix::dense(b.as_slice::<f32>()?, b.shape()[0], b.shape()[1]);
        let am = if self.trans_a { am.t() } else { am };
        let bm = if self.trans_b { bm.t() } else { bm };
        debug_assert_eq!((am.cols, bm.rows), (k, k));
        let (mut c, beta) = match optional(inputs, 2) {
            Some(ct) if self.beta != 0.0 => (super::array::broadcast_to(ct, &[m, n])?.into_vec::<f32>()?, self.beta),
            _ => (pool.overwritable(m * n), 0.0),
        };
        sgemm(self.alpha, am, bm, beta, &mut c);
        Ok(vec![out(vec![m, n], c)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn matmul_batched_and_vector() {
        let a = f32t(&[2, 2, 3], &[1., 2., 3., 4., 5., 6., 1., 0., 0., 0., 1., 0.]);
        let b = f32t(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
        let y = run(&MatMul::default(), &[a.clone(), b]).unwrap();
        assert_close(&y[0], &[2, 2, 2], &[22., 28., 49., 64., 1., 2., 3., 4.]);
        // Broadcast batch: [2,2,3] × [1,3,1].
        let y = run(&MatMul::default(), &[a, f32t(&[1, 3, 1], &[1., 1., 1.])]).unwrap();
        assert_close(&y[0], &[2, 2, 1], &[6., 15., 1., 1.]);
        let y = run(&MatMul::default(), &[f32t(&[3], &[1., 2., 3.]), f32t(&[3], &[4., 5., 6.])]).unwrap();
        assert_close(&y[0], &[], &[32.]);
        assert!(run(&MatMul::default(), &[f32t(&[2], &[1., 2.]), f32t(&[3], &[1., 2., 3.])]).is_err());
        // An empty reduction is a sum of nothing: zeros, even in a recycled (stale) buffer.
        let mut pool = BufferPool::default();
        pool.raise_budget(1 << 20);
        pool.give(Tensor::from_vec(vec![64], vec![f32::NAN; 64]).unwrap());
        let (a, b) = (Tensor::from_vec(vec![2, 0], Vec::<f32>::new()).unwrap(), Tensor::from_vec(vec![0, 3], Vec::<f32>::new()).unwrap());
        let y = MatMul::default().eval(&[Some(&a), Some(&b)], &mut pool).unwrap();
        assert_eq!((y[0].shape(), y[0].as_slice::<f32>().unwrap()), (&[2, 3][..], &[0.0; 6][..]));
    }

    #[test]
    fn threads_split_rows_without_changing_results() {
        let (m, k, n) = (301, 200, 33);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5).collect();
        let product = |threads: usize, a: Matrix| {
            let mut c = vec![f32::NAN; m * n];
            crate::threads::with(threads, || sgemm(1.0, a, Matrix::dense(&b, k, n), 0.0, &mut c));
            c
        };
        let one = product(1, Matrix::dense(&a, m, k));
        assert_eq!(product(3, Matrix::dense(&a, m, k)), one);
        // A transposed view splits by rows of the view too.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        assert_eq!(product(3, Matrix::dense(&at, k, m).t()), one);
        assert!((one[5] - (0..k).map(|p| a[5 / n * k + p] * b[p * n + 5 % n]).sum::<f32>()).abs() < 1e-4);
    }

    #[test]
    fn skinny_products_match_the_definition() {
        // 1 to 4 rows (a decoder's tokens) against B row-major and column-major (a transposed
        // weight, as Gemm's transB reads it), K past and not a multiple of the 16 lanes, α and
        // β, on 1 and 3 threads (the same bits).
        let (k, n) = (531, 1000);
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for m in 1..=4 {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let start: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.01).collect();
            for (name, bm) in [("row-major", Matrix::dense(&b, k, n)), ("column-major", Matrix::dense(&bt, n, k).t())] {
                let product = |threads: usize| {
                    let mut c = start.clone();
                    crate::threads::with(threads, || sgemm(2.0, Matrix::dense(&a, m, k), bm, 0.5, &mut c));
                    c
                };
                let one = product(1);
                assert_eq!(product(3), one, "{m} rows, B {name}");
                for (i, &got) in one.iter().enumerate() {
                    let (r, j) = (i / n, i % n);
                    let want = 2.0 * (0..k).map(|p| a[r * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() + 0.5 * start[i] as f64;
                    assert!((got as f64 - want).abs() < 1e-3, "{m} rows, B {name}, c[{r}, {j}] = {got}, want {want}");
                }
            }
        }
    }

    #[test]
    fn gemm_transposes_and_bias() {
        let g = Gemm { alpha: 2.0, beta: 0.5, trans_a: true, trans_b: true };
        // A' = [[1,2],[3,4]] stored transposed; B' = identity stored transposed.
        let y = run(&g, &[f32t(&[2, 2], &[1., 3., 2., 4.]), f32t(&[2, 2], &[1., 0., 0., 1.]), f32t(&[2], &[10., 20.])]).unwrap();
        assert_close(&y[0], &[2, 2], &[7., 14., 11., 18.]);
    }
}
