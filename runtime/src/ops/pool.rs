//! MaxPool, AveragePool (1-D and 2-D windows), GlobalAveragePool and GlobalMaxPool.

use super::conv::{Axis, Geometry, out_len};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, numel, out, required};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("MaxPool", |c| import(c, PoolKind::Max)),
    ("AveragePool", |c| import(c, PoolKind::Average { count_include_pad: c.attrs.int("count_include_pad", 0)? != 0 })),
    ("GlobalAveragePool", |_| Ok(Box::new(GlobalPool { max: false }))),
    ("GlobalMaxPool", |_| Ok(Box::new(GlobalPool { max: true }))),
];

#[derive(Debug, Clone, Copy)]
enum PoolKind {
    Max,
    Average { count_include_pad: bool },
}

fn import(c: &ImportCtx, kind: PoolKind) -> Result<Box<dyn Op>> {
    if c.attrs.int("storage_order", 0)? != 0 {
        return Err(super::unsupported_attr("MaxPool storage_order 1".into()));
    }
    Ok(Box::new(Pool { geom: Geometry::import(c, true)?, kind }))
}

/// A sliding-window pool.
#[derive(Debug)]
pub struct Pool {
    geom: Geometry,
    kind: PoolKind,
}

impl Pool {
    fn plan(&self, x: &[usize]) -> Result<(Vec<Axis>, Vec<usize>)> {
        ensure!(x.len() == 3 || x.len() == 4, "expected an [N, C, L] or [N, C, H, W] input, got {x:?}");
        let kernel = self.geom.kernel.clone().unwrap_or_default();
        let axes = self.geom.axes(&x[2..], &kernel)?;
        let mut shape = x[..2].to_vec();
        for a in &axes {
            shape.push(out_len(a, self.geom.ceil_mode)?);
        }
        Ok((axes, shape))
    }
}

impl Op for Pool {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        Ok(vec![Fact::new(DataType::F32, self.plan(&x.shape)?.1)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let (axes, shape) = self.plan(x.shape())?;
        let (ah, aw) = if axes.len() == 1 { ((1, 1, 1, 1, 0, 0), axes[0]) } else { (axes[0], axes[1]) };
        let (h, w) = (ah.0, aw.0);
        let (oh, ow) = (out_len(&ah, self.geom.ceil_mode)?, out_len(&aw, self.geom.ceil_mode)?);
        let xv = x.as_slice::<f32>()?;
        let planes = x.shape()[0] * x.shape()[1];
        let mut y = pool.take(numel(&shape)?);
        for p in 0..planes {
            let plane = &xv[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut count, mut padded_count) =
                        (if matches!(self.kind, PoolKind::Max) { f32::NEG_INFINITY } else { 0.0 }, 0usize, 0usize);
                    for ki in 0..ah.1 {
                        let iy = (oy * ah.2 + ki * ah.3) as isize - ah.4 as isize;
                        for kj in 0..aw.1 {
                            let ix = (ox * aw.2 + kj * aw.3) as isize - aw.4 as isize;
                            // Positions in the explicit pads count for count_include_pad; the
                            // ceil_mode overhang past them does not.
                            if iy < (h + ah.5) as isize && ix < (w + aw.5) as isize {
                                padded_count += 1;
                            }
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = plane[iy as usize * w + ix as usize];
                            count += 1;
                            acc = match self.kind {
                                PoolKind::Max => acc.max(v),
                                PoolKind::Average { .. } => acc + v,
                            };
                        }
                    }
                    y.push(match self.kind {
                        PoolKind::Max => acc,
                        PoolKind::Average { count_include_pad: true } => acc / padded_count.max(1) as f32,
                        PoolKind::Average { count_include_pad: false } => acc / count.max(1) as f32,
                    });
                }
            }
        }
        Ok(vec![out(shape, y)?])
    }
}

/// Pool over all spatial dims.
#[derive(Debug)]
pub struct GlobalPool {
    max: bool,
}

impl Op for GlobalPool {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        ensure!(x.shape.len() >= 3, "expected [N, C, spatial...], got {:?}", x.shape);
        let mut shape = x.shape.clone();
        shape[2..].iter_mut().for_each(|d| *d = 1);
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let shape = self.infer(&[Some(&Fact::new(x.dtype(), x.shape().to_vec()))])?.remove(0).shape;
        let spatial: usize = x.shape()[2..].iter().product();
        let xv = x.as_slice::<f32>()?;
        let y = xv
            .chunks(spatial.max(1))
            .map(|c| if self.max { c.iter().copied().fold(f32::NEG_INFINITY, f32::max) } else { c.iter().sum::<f32>() / spatial as f32 })
            .collect();
        Ok(vec![out(shape, y)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::AutoPad;
    use super::super::test_util::*;
    use super::*;

    fn pool(kind: PoolKind, k: usize, s: usize, p: usize, ceil_mode: bool) -> Pool {
        Pool {
            geom: Geometry {
                kernel: Some(vec![k, k]),
                strides: Some(vec![s, s]),
                dilations: None,
                pads: Some(vec![p; 4]),
                auto_pad: AutoPad::NotSet,
                group: 1,
                ceil_mode,
            },
            kind,
        }
    }

    #[test]
    fn max_and_average() {
        let x = f32t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let y = run(&pool(PoolKind::Max, 2, 1, 0, false), std::slice::from_ref(&x)).unwrap();
        assert_close(&y[0], &[1, 1, 2, 2], &[5., 6., 8., 9.]);
        let y = run(&pool(PoolKind::Max, 2, 2, 0, true), std::slice::from_ref(&x)).unwrap();
        assert_close(&y[0], &[1, 1, 2, 2], &[5., 6., 8., 9.]);
        let y = run(&pool(PoolKind::Average { count_include_pad: false }, 3, 1, 1, false), std::slice::from_ref(&x)).unwrap();
        assert_close(&y[0], &[1, 1, 3, 3], &[3., 3.5, 4., 4.5, 5., 5.5, 6., 6.5, 7.]);
        let y = run(&pool(PoolKind::Average { count_include_pad: true }, 3, 1, 1, false), std::slice::from_ref(&x)).unwrap();
        assert_close(&y[0], &[1, 1, 3, 3], &[12. / 9., 21. / 9., 16. / 9., 27. / 9., 5., 33. / 9., 24. / 9., 39. / 9., 28. / 9.]);
        let g = run(&GlobalPool { max: false }, &[x]).unwrap();
        assert_close(&g[0], &[1, 1, 1, 1], &[5.]);
    }
}
