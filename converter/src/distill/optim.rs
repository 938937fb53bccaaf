//! Adam with its state in the open, and the learning-rate schedule.
//!
//! candle-nn's `AdamW` (weight decay 0 is Adam) keeps its moments private, so a checkpoint
//! could not carry them and `--resume` would restart the moments from zero, which changes
//! the trajectory. This is the same update (Kingma & Ba, bias-corrected), with `state` and
//! `load_state` for checkpoints.

use anyhow::{Result, ensure};
use candle_core::{Tensor, Var, backprop::GradStore};

/// Adam's hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Adam over a fixed list of `Var`s.
pub struct Adam {
    vars: Vec<Var>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: usize,
    params: AdamParams,
}

impl Adam {
    /// Fresh moments for `vars`.
    pub fn new(vars: Vec<Var>, params: AdamParams) -> Result<Adam> {
        let first = vars.iter().map(|v| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let second = first.clone();
        Ok(Adam { vars, first, second, step: 0, params })
    }

    /// One update at learning rate `lr` from the gradients in `grads` (variables without a
    /// gradient, such as unused ones, are left alone).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamParams { beta1, beta2, eps } = self.params;
        let correct1 = 1.0 - beta1.powi(self.step as i32);
        let correct2 = 1.0 - beta2.powi(self.step as i32);
        for ((var, m), v) in self.vars.iter().zip(&mut self.first).zip(&mut self.second) {
            let Some(g) = grads.get(var) else { continue };
            *m = ((m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?).detach();
            *v = ((v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?).detach();
            let denom = v.affine(1.0 / correct2, 0.0)?.sqrt()?.affine(1.0, eps)?;
            let update = m.affine(lr / correct1, 0.0)?.div(&denom)?;
            var.set(&var.sub(&update)?)?;
        }
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The moments (first then second, per variable) for a checkpoint.
    pub fn state(&self) -> Vec<Tensor> {
        self.first.iter().chain(&self.second).cloned().collect()
    }

    /// Restores what [`state`](Self::state) returned, with the step count.
    pub fn load_state(&mut self, moments: Vec<Tensor>, step: usize) -> Result<()> {
        let n = self.vars.len();
        ensure!(moments.len() == 2 * n, "the checkpoint holds {} optimizer moments, this model needs {}", moments.len(), 2 * n);
        for (i, m) in moments.iter().enumerate() {
            ensure!(
                m.dims() == self.vars[i % n].dims(),
                "optimizer moment {i}: shape {:?}, variable {:?}",
                m.dims(),
                self.vars[i % n].dims()
            );
        }
        let mut moments = moments;
        self.second = moments.split_off(n);
        self.first = moments;
        self.step = step;
        Ok(())
    }
}

/// Linear warmup to `peak` over `warmup` steps, then cosine decay to zero at `total`.
///
/// ```
/// use distq_converter::distill::optim::learning_rate;
/// assert_eq!(learning_rate(0, 10, 100, 1e-3), 1e-4);
/// assert_eq!(learning_rate(9, 10, 100, 1e-3), 1e-3);
/// assert!(learning_rate(99, 10, 100, 1e-3) < 1e-6);
/// ```
pub fn learning_rate(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay = (total.saturating_sub(warmup)).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adam's bias-corrected update by hand for a scalar loss ½·w², against ours.
    #[test]
    fn adam_matches_the_update_rule() {
        let w = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![w.clone()], AdamParams::default()).unwrap();
        let (mut m, mut v, mut want) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        for step in 1..=3 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap().affine(0.5, 0.0).unwrap();
            adam.step(&loss.backward().unwrap(), 0.1).unwrap();
            for i in 0..2 {
                let g = want[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(step));
                let vh = v[i] / (1.0 - 0.999f64.powi(step));
                want[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = w.as_tensor().to_vec1::<f64>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        assert_eq!(adam.steps(), 3);
        let mut again = Adam::new(vec![w.clone()], AdamParams::default()).unwrap();
        assert!(again.load_state(vec![], 3).is_err());
        again.load_state(adam.state(), 3).unwrap();
    }
}
