//! Distillation and training losses.
//!
//! Logit distillation is the seed's recipe: `α·KL(softmax(zt/T) ‖ softmax(zs/T))·T² +
//! (1−α)·CE(zs, y)`, the teacher's distribution first (PyTorch's
//! `KLDivLoss(log_softmax(zs/T), softmax(zt/T))`), averaged over samples (`batchmean`). The
//! `T²` keeps the soft-label gradients on the scale of the hard-label ones as T grows.

use anyhow::{Result, ensure};
use candle_core::{D, Tensor};
use candle_nn::ops::log_softmax;

/// Logits as `[rows, classes]`: every leading dim (batch, sequence) becomes a row.
fn rows(logits: &Tensor) -> Result<Tensor> {
    let classes = *logits.dims().last().unwrap_or(&1);
    Ok(logits.reshape((logits.elem_count() / classes.max(1), classes))?)
}

/// `KL(softmax(teacher/T) ‖ softmax(student/T))`, summed over classes, averaged over rows.
pub fn kl_divergence(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    ensure!(
        student.dims() == teacher.dims(),
        "student logits {:?} and teacher logits {:?} differ in shape",
        student.dims(),
        teacher.dims()
    );
    let log_p_student = log_softmax(&rows(student)?.affine(1.0 / temperature, 0.0)?, D::Minus1)?;
    let log_p_teacher = log_softmax(&rows(teacher)?.affine(1.0 / temperature, 0.0)?, D::Minus1)?;
    let kl = log_p_teacher.exp()?.mul(&(log_p_teacher - log_p_student)?)?.sum(D::Minus1)?;
    Ok(kl.mean_all()?)
}

/// Cross-entropy of `logits` against integer class `labels` (one per row).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = rows(logits)?;
    let labels = labels.flatten_all()?.to_dtype(candle_core::DType::U32)?;
    ensure!(labels.elem_count() == logits.dims()[0], "{} labels for {} rows of logits", labels.elem_count(), logits.dims()[0]);
    Ok(candle_nn::loss::cross_entropy(&logits, &labels)?)
}

/// The seed's distillation loss; `labels = None` is pure distillation (α = 1).
pub fn distillation(student: &Tensor, teacher: &Tensor, labels: Option<&Tensor>, temperature: f64, alpha: f64) -> Result<Tensor> {
    let soft = kl_divergence(student, teacher, temperature)?.affine(temperature * temperature, 0.0)?;
    match labels {
        Some(y) if alpha < 1.0 => Ok((soft.affine(alpha, 0.0)? + cross_entropy(student, y)?.affine(1.0 - alpha, 0.0)?)?),
        _ => Ok(soft),
    }
}

/// Mean of `hidden` `[batch, tokens, dim]` over the tokens `mask` `[batch, tokens]` marks
/// (non-zero): how sentence embeddings are pooled.
pub fn masked_mean(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    ensure!(
        hidden.rank() == 3 && mask.dims() == &hidden.dims()[..2],
        "pooling needs hidden states [batch, tokens, dim] and a mask [batch, tokens]; got {:?} and {:?}",
        hidden.dims(),
        mask.dims()
    );
    let mask = mask.ne(0.0)?.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// How hidden states are compared in feature distillation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum FeatureLoss {
    /// Mean squared error over all elements.
    Mse,
    /// `1 − cos` between the vectors along the last dim, averaged.
    Cosine,
}

/// Feature distillation: the student's hidden state against the teacher's.
pub fn feature(student: &Tensor, teacher: &Tensor, kind: FeatureLoss) -> Result<Tensor> {
    ensure!(
        student.dims() == teacher.dims(),
        "student features {:?} and teacher features {:?} differ in shape",
        student.dims(),
        teacher.dims()
    );
    match kind {
        FeatureLoss::Mse => Ok((student - teacher)?.sqr()?.mean_all()?),
        FeatureLoss::Cosine => {
            let dot = (student * teacher)?.sum(D::Minus1)?;
            let norms = (student.sqr()?.sum(D::Minus1)? * teacher.sqr()?.sum(D::Minus1)?)?.affine(1.0, 1e-12)?.sqrt()?;
            Ok(dot.div(&norms)?.affine(-1.0, 1.0)?.mean_all()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: &[f64], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The KL term by hand, for one row: Σ p_t (log p_t − log p_s) at temperature T.
    fn kl_by_hand(zs: &[f64], zt: &[f64], temp: f64) -> f64 {
        let soft = |z: &[f64]| {
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| ((v - m) / temp).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        let (ps, pt) = (soft(zs), soft(zt));
        pt.iter().zip(&ps).map(|(t, s)| t * (t.ln() - s.ln())).sum()
    }

    #[test]
    fn distillation_matches_the_seed_formula() {
        let zs = [1.0, -0.5, 2.0, 0.3, 0.0, -1.0];
        let zt = [2.0, 0.5, 1.0, -0.2, 1.5, 0.1];
        let (temp, alpha) = (4.0, 0.7);
        let labels = Tensor::from_slice(&[2u32, 1], 2, &Device::Cpu).unwrap();
        let got = scalar(distillation(&t(&zs, (2, 3)), &t(&zt, (2, 3)), Some(&labels), temp, alpha).unwrap());
        let kl = (kl_by_hand(&zs[..3], &zt[..3], temp) + kl_by_hand(&zs[3..], &zt[3..], temp)) / 2.0;
        let ce = |z: &[f64], y: usize| -(z[y] - z.iter().map(|v| v.exp()).sum::<f64>().ln());
        let want = alpha * kl * temp * temp + (1.0 - alpha) * (ce(&zs[..3], 2) + ce(&zs[3..], 1)) / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // No labels: pure distillation.
        let pure = scalar(distillation(&t(&zs, (2, 3)), &t(&zt, (2, 3)), None, temp, alpha).unwrap());
        assert!((pure - kl * temp * temp).abs() < 1e-12);
        // KL is zero against itself and the order matters (teacher first).
        assert!(scalar(kl_divergence(&t(&zt, (2, 3)), &t(&zt, (2, 3)), 2.0).unwrap()).abs() < 1e-15);
        let reversed = scalar(kl_divergence(&t(&zt, (2, 3)), &t(&zs, (2, 3)), temp).unwrap());
        assert!((reversed - kl).abs() > 1e-6);
    }

    #[test]
    fn feature_losses() {
        let a = t(&[1.0, 0.0, 0.0, 2.0], (2, 2));
        let b = t(&[0.0, 1.0, 0.0, 4.0], (2, 2));
        assert!((scalar(feature(&a, &b, FeatureLoss::Mse).unwrap()) - (1.0 + 1.0 + 0.0 + 4.0) / 4.0).abs() < 1e-12);
        // Row 0 orthogonal (1 − 0), row 1 parallel (1 − 1).
        assert!((scalar(feature(&a, &b, FeatureLoss::Cosine).unwrap()) - 0.5).abs() < 1e-9);
        assert!(feature(&a, &t(&[0.0; 6], (2, 3)), FeatureLoss::Mse).is_err());
    }

    #[test]
    fn masked_mean_averages_only_marked_tokens() {
        let h = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], (2, 2, 2), &Device::Cpu).unwrap();
        let mask = Tensor::from_slice(&[1i64, 0, 1, 1], (2, 2), &Device::Cpu).unwrap();
        let pooled = masked_mean(&h, &mask).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(pooled, [1.0, 2.0, 6.0, 7.0]);
    }
}
