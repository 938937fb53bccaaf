//! Intra-op threads: how many threads a kernel may use for the run in progress, and the one
//! way kernels split work among them (disjoint row ranges of the output). The ranges are
//! chunks taken one at a time from a shared counter by the calling thread and by workers of
//! a process-wide pool that live as long as the process (no thread is spawned per op), so a
//! thread slowed down (a little core, another process) leaves its share to the others. A
//! session sets the count around each run (default: the performance cores, `cores.rs`); results do not depend on it, because
//! each output row is computed by one thread in the same order as with one.

use std::any::Any;
use std::cell::Cell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    static THREADS: Cell<usize> = const { Cell::new(1) };
}

/// Work below this many multiply-adds stays on one thread: waking a worker costs more than it
/// saves.
const MIN_WORK_PER_THREAD: usize = 1 << 17;

/// How long a thread polls for what it waits for (a worker for a job, a caller for its last
/// chunk) before it sleeps: a decoder's token runs about a hundred split ops some tens of µs
/// apart, and waking a sleeping thread costs about as much again each time.
const POLL: Duration = Duration::from_micros(100);

/// Polls `ready` for up to [`POLL`]; whether it became true.
fn poll(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
        if start.elapsed() > POLL {
            return ready();
        }
    }
}

/// Chunks per thread: enough that a slow thread's share is taken over by the others, few
/// enough that taking one costs nothing.
const CHUNKS_PER_THREAD: usize = 4;

/// Runs `f` with kernels allowed `threads` threads (at least 1) on this thread.
pub(crate) fn with<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let previous = THREADS.replace(threads.max(1));
    let result = f();
    THREADS.set(previous);
    result
}

/// Threads the run in progress may use.
pub(crate) fn current() -> usize {
    THREADS.get()
}

/// Splits `out` (rows of `row_len` elements) into chunks of whole multiples of `align` rows
/// and calls `f(first_row, rows)` on each, on up to [`current`] threads at once. `work`
/// (multiply-adds in all) decides how many threads are worth it.
pub(crate) fn for_row_ranges<T: Send>(out: &mut [T], row_len: usize, align: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let (threads, rows_per_chunk) = chunking(rows, align, work);
    if threads == 1 {
        f(0, out);
        return;
    }
    let (len, chunk_len, base) = (out.len(), rows_per_chunk * row_len, Shared(out.as_mut_ptr()));
    run_chunks(threads, rows.div_ceil(rows_per_chunk), &|i| {
        let start = i * chunk_len;
        // Safety: chunk i is elements start..start + chunk_len of `out` (the last one shorter),
        // disjoint from every other chunk, and `out` stays borrowed until run_chunks has
        // waited for every chunk.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), chunk_len.min(len - start)) };
        f(i * rows_per_chunk, chunk);
    });
}

/// Splits the columns of `out` (rows of `row_len` elements) into chunks of whole multiples
/// of `align` columns and calls `f(first_column, columns)` on each, on up to [`current`]
/// threads at once: for outputs whose columns are the independent work (a convolution's
/// pixels), where splitting rows would make every thread repeat the per-column work.
pub(crate) fn for_column_ranges<T: Send>(
    out: &mut [T],
    row_len: usize,
    align: usize,
    work: usize,
    f: impl Fn(usize, &mut Columns<T>) + Sync,
) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let (threads, cols_per_chunk) = chunking(row_len, align, work);
    let base = Shared(out.as_mut_ptr());
    let chunk = |i: usize| {
        let start = i * cols_per_chunk;
        let mut columns = Columns { base: base.get(), rows, row_len, start, len: cols_per_chunk.min(row_len - start), _out: PhantomData };
        f(start, &mut columns);
    };
    let chunks = if rows == 0 { 0 } else { row_len.div_ceil(cols_per_chunk) };
    if threads == 1 {
        (0..chunks).for_each(chunk);
    } else {
        run_chunks(threads, chunks, &chunk);
    }
}

/// How to split `units` (rows or columns) in whole multiples of `align`: the threads worth
/// `work` multiply-adds (at most [`current`]) and the units per chunk, a few chunks per thread,
/// or all of them in one chunk on one thread (so that per-chunk set-up happens once).
fn chunking(units: usize, align: usize, work: usize) -> (usize, usize) {
    let align = align.max(1);
    let blocks = units.div_ceil(align);
    let threads = current().min(blocks).min(work / MIN_WORK_PER_THREAD).max(1);
    let chunks = if threads == 1 { 1 } else { threads * CHUNKS_PER_THREAD };
    (threads, blocks.div_ceil(blocks.min(chunks).max(1)).max(1) * align)
}

/// A range of columns of every row of an output, one thread's chunk (see
/// [`for_column_ranges`]).
pub(crate) struct Columns<'a, T> {
    base: *mut T,
    rows: usize,
    row_len: usize,
    start: usize,
    len: usize,
    _out: PhantomData<&'a mut [T]>,
}

impl<T> Columns<'_, T> {
    /// Columns in the chunk.
    pub(crate) fn width(&self) -> usize {
        self.len
    }

    /// The chunk's columns of row `r`.
    ///
    /// # Panics
    /// When `r` is not a row of the output.
    pub(crate) fn row(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        // Safety: columns start..start + len of row r lie inside the output, which the chunk
        // borrows mutably for its lifetime, and no other chunk holds these columns.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(r * self.row_len + self.start), self.len) }
    }
}

/// The base pointer of an output whose chunks go to several threads.
struct Shared<T>(*mut T);

// Safety: each thread makes a slice of its own disjoint chunk from the pointer.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// One call of [`run_chunks`]: the chunks still to take, and those done.
struct Job {
    /// The caller's closure, its lifetime erased: called only for a chunk index below
    /// `chunks` that a thread has taken, and the caller returns only when every chunk is
    /// done, so no call outlives the borrow.
    run: *const (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
    /// Chunks finished; the last one notifies `finished` under `sleep`.
    done: AtomicUsize,
    sleep: Mutex<()>,
    finished: Condvar,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// Safety: `run` points to a `Sync` closure that outlives every use (see its doc).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Takes and runs chunks until none is left. A panic in a chunk is kept for the caller.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.chunks {
                return;
            }
            // Safety: i < chunks, so the caller is still waiting (see `run`).
            let run = unsafe { &*self.run };
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(panic);
            }
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.chunks {
                let _sleep = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                self.finished.notify_all();
            }
        }
    }
}

/// The workers: a queue of tickets, each inviting one worker to help with a job.
struct Pool {
    tickets: Mutex<VecDeque<Arc<Job>>>,
    /// The queue's length, for workers polling without the lock.
    pending: AtomicUsize,
    /// Workers asleep on `ready` (changed under the `tickets` lock).
    sleepers: AtomicUsize,
    ready: Condvar,
    workers: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        tickets: Mutex::new(VecDeque::new()),
        pending: AtomicUsize::new(0),
        sleepers: AtomicUsize::new(0),
        ready: Condvar::new(),
        workers: Mutex::new(0),
    })
}

impl Pool {
    /// Starts workers until there are `count` (fewer if the OS refuses threads: the callers
    /// then do the work themselves).
    fn grow(&'static self, count: usize) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while *workers < count {
            let spawned = std::thread::Builder::new().name("distq-worker".into()).spawn(move || self.serve());
            if spawned.is_err() {
                return;
            }
            *workers += 1;
        }
    }

    fn serve(&self) {
        loop {
            poll(|| self.pending.load(Ordering::Acquire) > 0);
            let job = {
                let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = tickets.pop_front() {
                        self.pending.store(tickets.len(), Ordering::Release);
                        break job;
                    }
                    self.sleepers.fetch_add(1, Ordering::Relaxed);
                    tickets = self.ready.wait(tickets).unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_sub(1, Ordering::Relaxed);
                }
            };
            job.work();
        }
    }
}

/// Calls `run(i)` for every `i < chunks`, on the calling thread and up to `threads − 1`
/// workers, each chunk once; returns when all are done, re-raising a chunk's panic.
fn run_chunks(threads: usize, chunks: usize, run: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    pool.grow(threads - 1);
    // Safety (lifetime erasure): see `Job::run`; this function waits for every chunk below.
    let run: *const (dyn Fn(usize) + Sync + '_) = run;
    let run = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(run) };
    let job = Arc::new(Job {
        run,
        chunks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        sleep: Mutex::new(()),
        finished: Condvar::new(),
        panic: Mutex::new(None),
    });
    {
        let mut tickets = pool.tickets.lock().unwrap_or_else(|e| e.into_inner());
        // Tickets of finished jobs (taken by no worker in time) are dropped here.
        tickets.retain(|j| j.next.load(Ordering::Relaxed) < j.chunks);
        tickets.extend(std::iter::repeat_n(job.clone(), threads - 1));
        pool.pending.store(tickets.len(), Ordering::Release);
        // Polling workers see `pending`; only sleeping ones need the (system) call.
        if pool.sleepers.load(Ordering::Relaxed) > 0 {
            pool.ready.notify_all();
        }
    }
    // The caller's chunks run with one thread, as the workers' do: a kernel inside a chunk
    // does not split again.
    with(1, || job.work());
    let finished = || job.done.load(Ordering::Acquire) >= chunks;
    if !poll(finished) {
        let mut sleep = job.sleep.lock().unwrap_or_else(|e| e.into_inner());
        while !finished() {
            sleep = job.finished.wait(sleep).unwrap_or_else(|e| e.into_inner());
        }
    }
    if let Some(panic) = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
        resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_row_once_in_aligned_blocks() {
        for threads in [1, 2, 3, 8] {
            for rows in [0, 1, 5, 8, 9, 33, 100] {
                let mut out = vec![0u32; rows * 3];
                with(threads, || {
                    for_row_ranges(&mut out, 3, 4, usize::MAX, |first, chunk| {
                        assert_eq!(first % 4, 0);
                        for (r, row) in chunk.chunks_mut(3).enumerate() {
                            row.fill((first + r) as u32 + 1);
                        }
                    })
                });
                let want: Vec<u32> = (0..rows).flat_map(|r| [r as u32 + 1; 3]).collect();
                assert_eq!(out, want, "{threads} threads, {rows} rows");
            }
        }
        assert_eq!(current(), 1, "the count is restored after a run");
    }

    #[test]
    fn column_ranges_cover_every_column_once_in_aligned_blocks() {
        for threads in [1, 2, 3, 8] {
            for (rows, cols) in [(0, 7), (1, 1), (3, 5), (4, 64), (2, 101)] {
                let mut out = vec![0u32; rows * cols];
                with(threads, || {
                    for_column_ranges(&mut out, cols, 4, usize::MAX, |first, columns| {
                        assert_eq!(first % 4, 0);
                        for r in 0..rows {
                            for (c, v) in columns.row(r).iter_mut().enumerate() {
                                *v += (r * 1000 + first + c) as u32 + 1;
                            }
                        }
                    })
                });
                let want: Vec<u32> = (0..rows * cols).map(|i| (i / cols * 1000 + i % cols) as u32 + 1).collect();
                assert_eq!(out, want, "{threads} threads, {rows} × {cols}");
            }
        }
    }

    /// Fills rows with their index (+1) on `threads` threads; the work is large enough to split.
    fn fill_rows(threads: usize, rows: usize) -> Vec<u32> {
        let mut out = vec![0u32; rows * 5];
        with(threads, || {
            for_row_ranges(&mut out, 5, 2, usize::MAX, |first, chunk| {
                for (r, row) in chunk.chunks_mut(5).enumerate() {
                    row.fill((first + r) as u32 + 1);
                }
            })
        });
        out
    }

    #[test]
    fn workers_persist_and_serve_concurrent_callers() {
        let want: Vec<u32> = (0..301).flat_map(|r| [r as u32 + 1; 5]).collect();
        // Eight callers at once (sessions run from several threads), each asking for 3 threads.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        assert_eq!(fill_rows(3, 301), want);
                    }
                });
            }
        });
        // Workers are started once, not per call.
        let workers = *pool().workers.lock().unwrap();
        // 8 threads is the most any test here asks for: 7 workers at most, not one per call.
        assert!((2..=7).contains(&workers), "{workers} workers");
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_pool_goes_on() {
        let mut out = vec![0u8; 64];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with(4, || for_row_ranges(&mut out, 1, 1, usize::MAX, |first, _| assert!(first < 40, "row {first}")))
        }));
        assert!(result.is_err(), "the chunk's panic was lost");
        assert_eq!(fill_rows(4, 99), (0..99).flat_map(|r| [r as u32 + 1; 5]).collect::<Vec<_>>());
    }
}
