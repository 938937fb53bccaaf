//! Intra-op threads: how many threads a kernel may use for the run in progress, and the one
//! way kernels split work among them (disjoint row ranges of the output, on scoped threads,
//! the calling thread taking the first range). A session sets the count around each run
//! (default 1); results do not depend on it, because each output row is computed by one
//! thread in the same order as with one.

use std::cell::Cell;

thread_local! {
    static THREADS: Cell<usize> = const { Cell::new(1) };
}

/// Work below this many multiply-adds stays on one thread: spawning costs more than it saves.
const MIN_WORK_PER_THREAD: usize = 1 << 19;

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

/// Splits `out` (rows of `row_len` elements) into up to [`current`] ranges of whole
/// multiples of `align` rows and calls `f(first_row, rows)` on each, concurrently. `work`
/// (multiply-adds in all) decides how many threads are worth it.
pub(crate) fn for_row_ranges<T: Send>(out: &mut [T], row_len: usize, align: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let blocks = rows.div_ceil(align.max(1));
    let threads = current().min(blocks).min(work / MIN_WORK_PER_THREAD).max(1);
    if threads == 1 {
        f(0, out);
        return;
    }
    let rows_per_thread = blocks.div_ceil(threads) * align.max(1);
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(rows_per_thread * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * rows_per_thread, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
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
}
