//! Benchmarking a session: latency percentiles, throughput, peak memory and energy per
//! inference, measured the same way on a workstation and on a phone (the mobile wrappers
//! call [`Session::benchmark`]).

use crate::energy::model::{Estimate, HOROWITZ_45NM, SOURCE, estimate};
use crate::energy::{Method, best_sensor, open};
use crate::error::{Error, Result};
use crate::{Session, Tensor};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where energy figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergySource {
    /// The best readable sensor, else the energy model.
    Auto,
    /// This method only (a sensor that cannot be read is an error).
    Only(Method),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed runs (at least 1).
    pub iters: usize,
    /// Untimed runs first (caches, buffer pool; the plan is made before them in any case).
    pub warmup: usize,
    /// Energy source.
    pub energy: EnergySource,
    /// Root of the sysfs tree the meters read (`/sys`; a fake tree in tests).
    pub sysfs: PathBuf,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions { iters: 50, warmup: 5, energy: EnergySource::Auto, sysfs: PathBuf::from("/sys") }
    }
}

/// Latency statistics, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
}

impl Latency {
    /// Statistics of `runs` (not empty); percentiles by nearest rank.
    pub fn of(runs: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = runs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Latency {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            min: ms[0],
            max: ms[ms.len() - 1],
        }
    }
}

/// Energy per inference and where it came from.
#[derive(Clone, Debug)]
pub struct EnergyReport {
    /// The method used.
    pub method: Method,
    /// Joules per inference.
    pub joules_per_inference: f64,
    /// What was measured (zones, rails, battery) or the model's citation.
    pub source: String,
    /// Why better methods were not used, and caveats.
    pub notes: Vec<String>,
    /// The energy model's estimate (always computed: it splits compute from memory).
    pub model: Estimate,
}

/// One benchmark's results.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Per-run latency.
    pub latency: Latency,
    /// Inferences per second (timed runs / their total time).
    pub throughput_per_s: f64,
    /// Timed runs.
    pub iters: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Threads the kernels used.
    pub threads: usize,
    /// The process's peak resident memory during the runs (Linux and Android; `None`
    /// elsewhere).
    pub peak_rss_bytes: Option<u64>,
    /// The plan's activation arena.
    pub arena_bytes: usize,
    /// Energy per inference.
    pub energy: EnergyReport,
}

/// Gauges that update this slowly make shorter runs unreliable.
const GAUGE_UPDATE: Duration = Duration::from_secs(1);

impl Session {
    /// Runs the model `options.warmup` times untimed, then `options.iters` times timed, and
    /// measures energy over the timed runs.
    ///
    /// ```
    /// use distq_runtime::bench::{BenchOptions, EnergySource};
    /// use distq_runtime::energy::Method;
    /// use distq_runtime::{Model, Session, Tensor};
    /// let session = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model())?);
    /// let x = Tensor::from_vec(vec![2], vec![1f32, 2.0])?;
    /// let options = BenchOptions { iters: 10, warmup: 1, energy: EnergySource::Only(Method::Model), ..Default::default() };
    /// let report = session.benchmark(vec![("x", x)], &options)?;
    /// assert!(report.latency.p50 <= report.latency.p99);
    /// assert_eq!(report.energy.method, Method::Model);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn benchmark<N: AsRef<str>>(&self, inputs: Vec<(N, Tensor)>, options: &BenchOptions) -> Result<BenchReport> {
        if options.iters == 0 {
            return Err(Error::Benchmark("iters is 0: at least one timed run is needed".into()));
        }
        let inputs: Vec<(String, Tensor)> = inputs.into_iter().map(|(n, t)| (n.as_ref().to_string(), t)).collect();
        // The plan the runs use (keyed by the inputs in graph order), made before any timing.
        let key: Vec<_> = self.order_inputs(inputs.clone())?.iter().map(|t| (t.dtype(), t.shape().to_vec())).collect();
        let plan = self.plan_for(&key)?;
        for _ in 0..options.warmup {
            self.run(inputs.clone())?;
        }
        let model = estimate(&plan, &HOROWITZ_45NM);
        let (mut meter, mut notes) = match options.energy {
            EnergySource::Only(Method::Model) => (None, Vec::new()),
            EnergySource::Only(method) => (Some(open(method, &options.sysfs)?), Vec::new()),
            EnergySource::Auto => best_sensor(&options.sysfs),
        };
        reset_peak_rss();
        if let Some(m) = meter.as_mut() {
            m.start()?;
        }
        let mut runs = Vec::with_capacity(options.iters);
        let started = Instant::now();
        for _ in 0..options.iters {
            let inputs = inputs.clone();
            let t = Instant::now();
            self.run(inputs)?;
            runs.push(t.elapsed());
        }
        let total = started.elapsed();
        let energy = match meter.as_mut() {
            Some(m) => {
                let joules = m.stop()?;
                if m.method() != Method::Rapl && total < GAUGE_UPDATE {
                    notes.push(format!(
                        "timed runs took {:.0} ms, less than the gauge's update interval: raise iters",
                        total.as_secs_f64() * 1e3
                    ));
                }
                EnergyReport { method: m.method(), joules_per_inference: joules / options.iters as f64, source: m.source(), notes, model }
            }
            None => EnergyReport { method: Method::Model, joules_per_inference: model.joules, source: SOURCE.into(), notes, model },
        };
        Ok(BenchReport {
            latency: Latency::of(&runs),
            throughput_per_s: options.iters as f64 / total.as_secs_f64(),
            iters: options.iters,
            warmup: options.warmup,
            threads: self.threads(),
            peak_rss_bytes: peak_rss_bytes(),
            arena_bytes: plan.arena_bytes,
            energy,
        })
    }
}

/// Resets the kernel's peak-RSS mark so that [`peak_rss`] covers what follows (Linux ≥ 4.0;
/// elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory in bytes (`VmHWM`), where `/proc` has it (Linux,
/// Android).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let runs: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(&runs);
        assert_eq!((l.p50, l.p90, l.p99, l.min, l.max), (50.0, 90.0, 99.0, 1.0, 100.0));
        assert!((l.mean - 50.5).abs() < 1e-9);
        let one = Latency::of(&[Duration::from_millis(3)]);
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
    }
}
