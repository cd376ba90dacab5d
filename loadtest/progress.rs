//! The live progress line (one per second, on stderr, only when it is a terminal); reads samples, never touches the engine.

use std::sync::mpsc::Receiver;

use hdrhistogram::Histogram;

use crate::engine::ProgressSample;
use crate::report::{format_count, format_us};
use crate::stats::new_histogram;

/// Prints one line per second until every thread has hung up. Line `[Ns]` covers the second
/// that ended N seconds after the start; seconds inside the warm-up are marked.
pub fn print_lines(rx: Receiver<ProgressSample>, threads: usize, warmup_s: u64) {
    let mut cumulative = new_histogram();
    let mut pending: Vec<(u64, usize, u64, u64)> = Vec::new();
    while let Ok(sample) = rx.recv() {
        // Samples of one second arrive from every thread; print when the last one is in.
        let slot = match pending.iter().position(|p| p.0 == sample.second) {
            Some(slot) => slot,
            None => {
                pending.push((sample.second, 0, 0, 0));
                pending.len() - 1
            }
        };
        pending[slot].1 += 1;
        pending[slot].2 += sample.responses;
        pending[slot].3 += sample.errors;
        // Percentiles so far: warm-up samples never reach the histogram (the engine does not
        // record them), so `cumulative` only holds the measured part.
        let _ = cumulative.add(&sample.latency_us);
        if pending[slot].1 == threads {
            let (second, _, responses, errors) = pending.remove(slot);
            print_line(second, responses, errors, &cumulative, warmup_s);
        }
    }
    // Threads that finished a little apart leave their last second unmatched.
    pending.sort_by_key(|p| p.0);
    for (second, _, responses, errors) in pending {
        print_line(second, responses, errors, &cumulative, warmup_s);
    }
}

fn print_line(
    second: u64,
    responses: u64,
    errors: u64,
    cumulative: &Histogram<u64>,
    warmup_s: u64,
) {
    let phase = if second <= warmup_s { " (warm-up)" } else { "" };
    let p99 = if cumulative.is_empty() {
        "-".to_string()
    } else {
        format_us(cumulative.value_at_quantile(0.99) as f64)
    };
    // A terminal gone (a closed ssh session) ends the progress lines, not the run.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "[{second:>4}s] {:>9} req/s  errors {errors:<6} p99 so far {p99}{phase}",
        format_count(responses as f64)
    );
}
