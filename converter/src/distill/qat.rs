//! Quantization-aware training: weights pass through fake quantization with a
//! straight-through estimator.
//!
//! The forward pass sees each lowered weight exactly as the written QDQ model will restore
//! it (the same quantizer, [`crate::quantize::weights::quantize`], then dequantized), so the
//! loss measures the shipped model; the backward pass treats the rounding as the identity
//! (`w + (q(w) − w).detach()`), so the float weights keep receiving gradients and drift to
//! where their rounded values serve the loss best.

use crate::quantize::weights::{Layout, Precision, quantize};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

/// How one weight is fake-quantized.
#[derive(Clone, Copy, Debug)]
pub struct FakeQuant {
    /// The precision it will be stored at.
    pub precision: Precision,
    /// Its axes' roles (per-channel scales, int4 blocks).
    pub layout: Layout,
}

/// `w` fake-quantized: the forward value is `dequantize(quantize(w))`, the gradient w.r.t.
/// `w` is passed through unchanged.
pub fn straight_through(w: &Tensor, fq: FakeQuant) -> Result<Tensor> {
    if fq.precision == Precision::F32 {
        return Ok(w.clone());
    }
    let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let restored = quantize(&values, w.dims(), fq.precision, fq.layout)
        .with_context(|| format!("fake quantization to {}", fq.precision.name()))?
        .dequantized();
    let restored = Tensor::from_vec(restored, w.dims(), w.device())?.to_dtype(w.dtype())?;
    Ok((w + (restored - w)?.detach())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_is_the_stored_weight_and_the_gradient_passes_through() {
        let values: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) / 17.0).collect();
        let w = Var::from_vec(values.clone(), (4, 16), &Device::Cpu).unwrap();
        let layout = Layout { channel_axis: 0, reduction_axis: 1 };
        for precision in [Precision::Int8, Precision::Int4 { block: 16, pow2_scales: false }, Precision::F16] {
            let fq = FakeQuant { precision, layout };
            let y = straight_through(w.as_tensor(), fq).unwrap();
            let want = quantize(&values, &[4, 16], precision, layout).unwrap().dequantized();
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{precision:?}");
            let r = Tensor::from_vec((0..64).map(|i| i as f32).collect::<Vec<_>>(), (4, 16), &Device::Cpu).unwrap();
            let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(g, (0..64).map(|i| i as f32).collect::<Vec<_>>(), "{precision:?}: straight-through gradient");
        }
    }
}
