//! Progress on stderr for long steps (quantization, training).

use std::time::Instant;

/// Progress of long steps for stderr: on a terminal a bar redrawn in place with the time
/// left and `detail` (loss, speed); otherwise (logs) one line when a step starts and at each
/// further tenth.
pub(crate) fn progress_printer(terminal: bool) -> impl FnMut(&str, usize, usize, &str) -> String {
    let (mut step, mut tenth, mut started) = (String::new(), 0, Instant::now());
    move |what, done, total, detail| {
        let new_step = what != step;
        if new_step {
            (step, started) = (what.to_string(), Instant::now());
        }
        let total = total.max(1);
        if terminal {
            const WIDTH: usize = 30;
            let filled = done.min(total) * WIDTH / total;
            let left = if done > 0 && done < total {
                format!(" {:.0} s left", started.elapsed().as_secs_f64() * (total - done) as f64 / done as f64)
            } else {
                String::new()
            };
            let end = if done >= total { "\n" } else { "" };
            let detail = if detail.is_empty() { String::new() } else { format!(" {detail}") };
            return format!("\r{what} [{}{}] {done}/{total}{left}{detail}\x1b[K{end}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        }
        let now = done * 10 / total;
        if new_step || now != tenth {
            tenth = now;
            return if detail.is_empty() { format!("{what} {done}/{total}\n") } else { format!("{what} {done}/{total} {detail}\n") };
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::progress_printer;

    #[test]
    fn logs_get_a_line_per_tenth_and_terminals_a_bar() {
        let mut log = progress_printer(false);
        let lines: String = (0..=40).map(|i| log("sensitivity", i, 40, "")).collect();
        assert_eq!(lines.lines().count(), 11, "start and each tenth: {lines}");
        assert!(lines.ends_with("sensitivity 40/40\n"));
        assert_eq!(log("verify", 0, 1, ""), "verify 0/1\n", "a new step always shows");
        let mut bar = progress_printer(true);
        assert!(bar("search", 3, 6, "").starts_with("\rsearch [###############---------------] 3/6"));
        assert!(bar("search", 6, 6, "loss 1").ends_with("\n"));
    }
}
