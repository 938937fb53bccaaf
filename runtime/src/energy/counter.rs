//! Energy counters (RAPL zones, ODPM rails): polled on a thread, each poll adding every
//! counter's increase since the last, with wrap-around at the counter's range.

use super::sampler::Sampler;
use super::{EnergyMeter, Method};
use crate::error::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often counters are polled: the smallest RAPL ranges seen are 2³² µJ (4.3 kJ, 43 s at
/// 100 W), so one wrap at most happens between polls.
const POLL: Duration = Duration::from_millis(500);

/// Reads every counter, in µJ.
pub(crate) type ReadCounters = Arc<dyn Fn() -> Result<Vec<u64>> + Send + Sync>;

/// Sums the increases of a set of counters across readings.
#[derive(Debug)]
pub(crate) struct Accumulator {
    last: Vec<u64>,
    /// Each counter's range (it runs 0..=range, then wraps to 0); `None`: never wraps.
    ranges: Vec<Option<u64>>,
    total_uj: u128,
}

impl Accumulator {
    pub fn new(first: Vec<u64>, ranges: Vec<Option<u64>>) -> Accumulator {
        Accumulator { last: first, ranges, total_uj: 0 }
    }

    /// Adds the increase from the last reading to `now`. A counter below its last value
    /// wrapped (at its range) or, without a range, was reset (counted from 0).
    pub fn observe(&mut self, now: &[u64]) {
        for ((last, &now), range) in self.last.iter_mut().zip(now).zip(&self.ranges) {
            let increase = match (now >= *last, range) {
                (true, _) => now - *last,
                (false, Some(range)) => range.saturating_sub(*last) + now,
                (false, None) => now,
            };
            self.total_uj += increase as u128;
            *last = now;
        }
    }

    pub fn joules(&self) -> f64 {
        self.total_uj as f64 * 1e-6
    }
}

/// A meter over counters.
pub struct CounterMeter {
    method: Method,
    source: String,
    read: ReadCounters,
    ranges: Vec<Option<u64>>,
    state: Option<(Arc<Mutex<Accumulator>>, Sampler)>,
}

impl CounterMeter {
    pub(crate) fn new(method: Method, source: String, read: ReadCounters, ranges: Vec<Option<u64>>) -> CounterMeter {
        CounterMeter { method, source, read, ranges, state: None }
    }
}

impl EnergyMeter for CounterMeter {
    fn method(&self) -> Method {
        self.method
    }

    fn source(&self) -> String {
        self.source.clone()
    }

    fn start(&mut self) -> Result<()> {
        let acc = Arc::new(Mutex::new(Accumulator::new((self.read)()?, self.ranges.clone())));
        let (shared, read) = (acc.clone(), self.read.clone());
        let sampler = Sampler::spawn(POLL, move || {
            // A failed poll is retried at the next; the final reading in `stop` reports errors.
            if let Ok(now) = read() {
                shared.lock().unwrap_or_else(|e| e.into_inner()).observe(&now);
            }
        });
        self.state = Some((acc, sampler));
        Ok(())
    }

    fn stop(&mut self) -> Result<f64> {
        let Some((acc, sampler)) = self.state.take() else {
            return Err(super::energy_error(self.method, "stopped without being started".into()));
        };
        sampler.finish();
        let now = (self.read)()?;
        let mut acc = acc.lock().unwrap_or_else(|e| e.into_inner());
        acc.observe(&now);
        Ok(acc.joules())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_add_up_across_wraps_and_resets() {
        let mut acc = Accumulator::new(vec![900, 10, 5], vec![Some(1000), Some(1000), None]);
        acc.observe(&[950, 20, 8]); // 50 + 10 + 3
        acc.observe(&[30, 20, 2]); // wrap: 50 + 30; unchanged; reset: 2
        acc.observe(&[40, 999, 2]); // 10 + 979 + 0
        assert_eq!(acc.total_uj, 63 + 82 + 989);
        assert!((acc.joules() - 1134e-6).abs() < 1e-12);
    }
}
