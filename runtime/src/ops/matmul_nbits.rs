//! com.microsoft `MatMulNBits`: `Y = A · dequant(B)ᵀ + bias` with 4- or 8-bit weights in
//! blocks along K, the weight-only format onnxruntime's int4 quantizer writes. The weights
//! are dequantized once (on first use, kept while B is the same constant) and run on the f32
//! GEMM: the semantics of onnxruntime's `accuracy_level` 0, which the parity test holds us to.

use super::matmul::{MatRef, sgemm};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, PreparedWeights, expect_dtype, numel, optional, out, required};
use crate::error::{Result, ensure};
use crate::nibbles::unpack_u4;
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("com.microsoft::MatMulNBits", import)];

fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let int = |key: &str| -> Result<usize> {
        let v = c.attrs.int(key, -1)?;
        ensure!(v > 0, "attribute {key} is {v}, expected a positive value");
        Ok(v as usize)
    };
    let bits = c.attrs.int("bits", 4)?;
    if bits != 4 && bits != 8 {
        return Err(super::unsupported_attr(format!("{bits}-bit weights (4 and 8 are)")));
    }
    if c.num_inputs > 4 && c.num_inputs != 6 {
        return Err(super::unsupported_attr("g_idx (act-order) input".into()));
    }
    Ok(Box::new(MatMulNBits {
        k: int("K")?,
        n: int("N")?,
        bits: bits as usize,
        block: int("block_size")?,
        dequantized: PreparedWeights::default(),
    }))
}

/// `MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)`.
#[derive(Debug)]
pub struct MatMulNBits {
    k: usize,
    n: usize,
    bits: usize,
    block: usize,
    /// Weights as f32 `N × K`.
    dequantized: PreparedWeights<Vec<f32>>,
}

impl MatMulNBits {
    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// `N × K` f32 weights from the packed blocks, scales and zero points.
    fn dequantize(&self, b: &Tensor, scales: &Tensor, zeros: Option<&Tensor>) -> Result<Vec<f32>> {
        let (k, n, blocks) = (self.k, self.n, self.blocks());
        let blob = self.block * self.bits / 8;
        let packed = b.as_slice::<u8>()?;
        ensure!(packed.len() == n * blocks * blob, "B holds {} bytes; N {n} × {blocks} blocks × {blob} bytes expected", packed.len());
        let scales = scales.as_slice::<f32>()?;
        ensure!(scales.len() == n * blocks, "scales hold {} values; N {n} × {blocks} blocks expected", scales.len());
        let default_zero = (1 << (self.bits - 1)) as f32;
        // Zero point of (row, block): packed u8 like the weights (rows padded to whole bytes),
        // or floats.
        let zero_at: Box<dyn Fn(usize, usize) -> f32> = match zeros {
            None => Box::new(move |_, _| default_zero),
            Some(z) if z.dtype() == DataType::F32 => {
                let z = z.as_slice::<f32>()?.to_vec();
                ensure!(z.len() == n * blocks, "float zero points hold {} values; {} expected", z.len(), n * blocks);
                Box::new(move |row, blk| z[row * blocks + blk])
            }
            Some(z) => {
                let z = z.as_slice::<u8>()?;
                let per_row = (blocks * self.bits).div_ceil(8);
                ensure!(z.len() == n * per_row, "zero points hold {} bytes; N {n} × {per_row} expected", z.len());
                let values: Vec<u8> = if self.bits == 4 {
                    z.chunks_exact(per_row)
                        .flat_map(|row| unpack_u4(row, 2 * per_row).unwrap_or_default().into_iter().take(blocks))
                        .collect()
                } else {
                    z.to_vec()
                };
                Box::new(move |row, blk| values[row * blocks + blk] as f32)
            }
        };
        let mut w = vec![0f32; n * k];
        for (row, (w_row, packed_row)) in w.chunks_exact_mut(k).zip(packed.chunks_exact(blocks * blob)).enumerate() {
            let q: Vec<u8> = if self.bits == 4 { unpack_u4(packed_row, 2 * packed_row.len())? } else { packed_row.to_vec() };
            for (p, w) in w_row.iter_mut().enumerate() {
                let blk = p / self.block;
                *w = (q[p] as f32 - zero_at(row, blk)) * scales[row * blocks + blk];
            }
        }
        Ok(w)
    }
}

impl Op for MatMulNBits {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = required(inputs, 0)?;
        expect_dtype(a, &[DataType::F32], "A")?;
        expect_dtype(required(inputs, 1)?, &[DataType::U8], "B")?;
        expect_dtype(required(inputs, 2)?, &[DataType::F32], "scales")?;
        ensure!(a.shape.last() == Some(&self.k), "A has shape {:?}; its last dim must be K = {}", a.shape, self.k);
        if let Some(bias) = optional(inputs, 5) {
            ensure!(bias.shape.iter().product::<usize>() == self.n, "bias has shape {:?}; N = {} values expected", bias.shape, self.n);
        }
        let mut shape = a.shape.clone();
        *shape.last_mut().expect("checked above") = self.n;
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let w = self.dequantized.get(b, || self.dequantize(b, required(inputs, 2)?, optional(inputs, 3)))?;
        let (k, n) = (self.k, self.n);
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let m = a.len() / k;
        let mut y = pool.overwritable(numel(&shape)?);
        sgemm(1.0, MatRef::dense(a.as_slice::<f32>()?, m, k), MatRef::dense(&w, n, k).t(), 0.0, &mut y);
        if let Some(bias) = optional(inputs, 5) {
            let bias = bias.as_slice::<f32>()?;
            for row in y.chunks_exact_mut(n) {
                for (v, &b) in row.iter_mut().zip(bias) {
                    *v += b;
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

    #[test]
    fn four_bit_blocks_with_packed_zero_points() {
        // K = 5 in blocks of 4 (the second block short, padded in the blob), N = 2.
        let op = MatMulNBits { k: 5, n: 2, bits: 4, block: 4, dequantized: PreparedWeights::default() };
        // Row 0: q = [1, 2, 3, 4 | 5], row 1: q = [15, 0, 8, 8 | 9]; 2 bytes per blob.
        let b = Tensor::from_vec(vec![2, 2, 2], vec![0x21u8, 0x43, 0x05, 0x00, 0x0f, 0x88, 0x09, 0x00]).unwrap();
        let scales = f32t(&[4], &[1.0, 2.0, 0.5, 0.25]);
        // Zero points: row 0 blocks (0, 1) → byte 0x10; row 1 blocks (8, 8) → 0x88.
        let zeros = Tensor::from_vec(vec![2], vec![0x10u8, 0x88]).unwrap();
        let a = f32t(&[1, 5], &[1., 1., 1., 1., 1.]);
        let bias = f32t(&[2], &[0.5, -0.5]);
        let y = run(&op, &[a, Some(b), scales, Some(zeros), None, bias]).unwrap();
        // Row 0: (1+2+3+4)·1 + (5−1)·2 = 18 (+0.5); row 1: (7 − 8 + 0 + 0)·0.5 + (9−8)·0.25 = −0.25 (−0.5).
        assert_close(&y[0], &[1, 2], &[18.5, -0.75]);
    }
}
