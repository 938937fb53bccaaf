//! Picking the next token from logits: greedy, or sampled with temperature, top-k, top-p
//! (nucleus) and min-p filters, from a seeded generator (the same seed, the same tokens).

/// How the next token is picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); above 0, logits are divided by it and a
    /// token drawn from their softmax.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens are candidates (0: all).
    pub top_k: usize,
    /// Only the most likely tokens whose probabilities add up to `top_p` (1: all).
    pub top_p: f32,
    /// Only tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f32,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy.
    fn default() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0 }
    }
}

impl Sampling {
    /// Whether the values make sense: a temperature of 0 or more, `top_p` in (0, 1], `min_p`
    /// in [0, 1].
    pub fn check(&self) -> crate::error::Result<()> {
        let Sampling { temperature: t, top_p, min_p, .. } = *self;
        crate::error::ensure!(t >= 0.0 && t.is_finite(), "temperature {t} must be 0 or more");
        crate::error::ensure!(top_p > 0.0 && top_p <= 1.0, "top-p {top_p} must be in (0, 1]");
        crate::error::ensure!((0.0..=1.0).contains(&min_p), "min-p {min_p} must be in [0, 1]");
        Ok(())
    }
}

/// A [`Sampling`] with its generator's state.
pub struct Sampler {
    sampling: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler starting from `sampling.seed`.
    pub fn new(sampling: Sampling) -> Sampler {
        let state = sampling.seed;
        Sampler { sampling, state }
    }

    /// SplitMix64: a uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / 2f64.powi(64)
    }

    /// The next token from `logits` (NaN logits are never picked).
    ///
    /// ```
    /// use distq_runtime::generate::{Sampler, Sampling};
    /// let logits = [0.5f32, 3.0, 1.0, 2.9];
    /// assert_eq!(Sampler::new(Sampling::default()).pick(&logits), 1);
    /// // Two candidates, drawn from their softmax: the same seed, the same draws.
    /// let two = Sampling { temperature: 1.0, top_k: 2, seed: 7, ..Sampling::default() };
    /// let draws = |s: &Sampling| { let mut r = Sampler::new(s.clone()); (0..20).map(|_| r.pick(&logits)).collect::<Vec<_>>() };
    /// assert!(draws(&two).iter().all(|&t| t == 1 || t == 3));
    /// assert_eq!(draws(&two), draws(&two));
    /// ```
    pub fn pick(&mut self, logits: &[f32]) -> usize {
        let s = &self.sampling;
        let valid = |&(_, v): &(usize, f32)| !v.is_nan();
        if s.temperature <= 0.0 || s.top_k == 1 {
            // The first of the largest.
            return logits
                .iter()
                .copied()
                .enumerate()
                .filter(valid)
                .fold(None, |best: Option<(usize, f32)>, (i, v)| match best {
                    Some((_, b)) if b >= v => best,
                    _ => Some((i, v)),
                })
                .map_or(0, |(i, _)| i);
        }
        let mut candidates: Vec<(usize, f32)> = logits.iter().copied().enumerate().filter(valid).collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if s.top_k > 0 {
            candidates.truncate(s.top_k);
        }
        // Softmax at the temperature, from the largest logit.
        let (max, t) = (candidates[0].1, s.temperature);
        let mut probs: Vec<f64> = candidates.iter().map(|&(_, v)| (((v - max) / t) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.iter().take_while(|&&p| p >= s.min_p as f64 * probs[0]).count().max(1);
        if s.top_p < 1.0 {
            let mut sum = 0.0;
            let nucleus = probs.iter().take_while(|&&p| {
                let inside = sum < s.top_p as f64;
                sum += p;
                inside
            });
            keep = keep.min(nucleus.count().max(1));
        }
        let kept: f64 = probs[..keep].iter().sum();
        let mut u = self.uniform() * kept;
        for (i, &p) in probs[..keep].iter().enumerate() {
            if u < p {
                return candidates[i].0;
            }
            u -= p;
        }
        candidates[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::{Sampler, Sampling};

    fn draws(s: Sampling, logits: &[f32], n: usize) -> Vec<usize> {
        let mut r = Sampler::new(s);
        (0..n).map(|_| r.pick(logits)).collect()
    }

    #[test]
    fn filters_keep_what_they_say() {
        // Probabilities at temperature 1 ≈ [0.032, 0.087, 0.237, 0.644] for tokens 0..3.
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let sample = Sampling { temperature: 1.0, seed: 3, ..Sampling::default() };
        let all = draws(sample.clone(), &logits, 4000);
        let share = |t: usize| all.iter().filter(|&&x| x == t).count() as f64 / all.len() as f64;
        assert!((share(3) - 0.644).abs() < 0.03 && (share(0) - 0.032).abs() < 0.015, "{} {}", share(3), share(0));
        // top-p 0.8: tokens 3 and 2 (0.644 < 0.8 ≤ 0.881).
        assert!(draws(Sampling { top_p: 0.8, ..sample.clone() }, &logits, 500).iter().all(|&t| t >= 2));
        // min-p 0.3: at least 0.193, tokens 3 and 2.
        assert!(draws(Sampling { min_p: 0.3, ..sample.clone() }, &logits, 500).iter().all(|&t| t >= 2));
        // top-k 3 never draws token 0.
        let k3 = draws(Sampling { top_k: 3, ..sample.clone() }, &logits, 500);
        assert!(k3.iter().all(|&t| t >= 1) && k3.contains(&1));
        // A low temperature is nearly greedy; another seed draws other tokens.
        assert!(draws(Sampling { temperature: 0.05, ..sample.clone() }, &logits, 200).iter().all(|&t| t == 3));
        assert_ne!(draws(Sampling { seed: 4, ..sample.clone() }, &logits, 50), draws(sample, &logits, 50));
        // NaN logits are never picked, greedy or not.
        let nan = [f32::NAN, 1.0, f32::NAN];
        assert_eq!(draws(Sampling::default(), &nan, 1), [1]);
        assert!(draws(Sampling { temperature: 1.0, ..Sampling::default() }, &nan, 50).iter().all(|&t| t == 1));
    }
}
