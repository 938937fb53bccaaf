//! A background thread that calls a closure at a fixed interval until finished: meters use
//! it to poll counters (so no wrap goes unseen) and to sample power.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The running thread; finishing (or dropping) stops and joins it.
pub(crate) struct Sampler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Calls `tick` every `interval` (first after one interval) on a new thread.
    pub fn spawn(interval: Duration, mut tick: impl FnMut() + Send + 'static) -> Sampler {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let handle = std::thread::spawn(move || {
            let (lock, wake) = &*signal;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Waits out the interval, returning early when told to stop (also when told
                // before this thread first got here).
                stopped = wake.wait_timeout_while(stopped, interval, |stop| !*stop).unwrap_or_else(|e| e.into_inner()).0;
                if *stopped {
                    return;
                }
                drop(stopped);
                tick();
                stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
        });
        Sampler { stop, handle: Some(handle) }
    }

    /// Stops the thread and waits for it.
    pub fn finish(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ticks_until_finished_and_stops_promptly() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let sampler = Sampler::spawn(Duration::from_millis(1), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        while ticks.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        sampler.finish();
        let after = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(ticks.load(Ordering::SeqCst), after, "no tick after finish");
        // A long interval does not delay finishing.
        let slow = Sampler::spawn(Duration::from_secs(3600), || {});
        slow.finish();
    }
}
