//! Log lines to stderr that never block the thread that says them once the server runs.
//!
//! Before `start` (flags, config, the `percore` subcommands) a line is written in place: the
//! process has nothing else to do, and the line that says why it exits 2 must not be lost.
//! From `start` on, every line goes into one bounded queue, in order, and one writer thread
//! (`percore-log`) writes them out. A stderr nobody reads (a stalled pipe, a log shipper that
//! stopped reading) then blocks only that thread: a shard logging a failed snapshot or a
//! handler's bad status goes on serving, a panicking one still ends the process, and the
//! signal thread still drains on SIGTERM (found in review: each blocked in its own write).
//! While the queue is full, lines are dropped and counted; the next line queued carries the
//! count, and the writer says it first, where the lines went missing.
//!
//! The process exits through `flush`, which waits a bounded time for what is queued: a line
//! still unwritten then is lost with the process, never waited for without bound.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

/// Lines queued and not yet written, at most; past it lines are dropped (counted). Server lines
/// are a few hundred bytes, so the queue holds well under a MiB.
pub const QUEUE_LINES_MAX: usize = 1024;

/// How long a line said just before the process exits may take to be written.
pub const EXIT_WAIT: Duration = Duration::from_millis(200);

/// Set by `start`: the process's queue, or None when its writer thread could not be started
/// (lines are then written in place, as before `start`).
static STDERR: OnceLock<Option<Queue>> = OnceLock::new();

/// Writes one line to stderr; see the module docs. Used by `log_line!`.
pub fn line(text: String) {
    match STDERR.get() {
        Some(Some(queue)) => queue.line(text),
        _ => write_line(&mut std::io::stderr(), &text),
    }
}

/// From now on lines are queued and written by the `percore-log` thread. Idempotent.
pub fn start() {
    STDERR.get_or_init(|| Queue::start(std::io::stderr(), QUEUE_LINES_MAX).ok());
}

/// Whether lines are queued (`start` ran and its thread runs).
pub fn started() -> bool {
    matches!(STDERR.get(), Some(Some(_)))
}

/// Waits at most `wait` for every queued line to be written; true if they were.
pub fn flush(wait: Duration) -> bool {
    match STDERR.get() {
        Some(Some(queue)) => queue.flush(wait),
        _ => true,
    }
}

/// Lines to one writer, through a bounded queue and a thread that writes them in order.
struct Queue {
    lines: SyncSender<Entry>,
    /// Shared with the writer thread for the process's life (a queue is never dropped).
    counts: &'static Counts,
}

/// A line, and how many were dropped just before it.
struct Entry {
    dropped_before: u64,
    text: String,
}

#[derive(Default)]
struct Counts {
    /// Lines accepted into the queue and not yet written.
    pending: AtomicUsize,
    /// Lines dropped since the last one queued.
    dropped: AtomicU64,
}

impl Queue {
    fn start(mut out: impl Write + Send + 'static, capacity: usize) -> std::io::Result<Queue> {
        let counts: &'static Counts = Box::leak(Box::default());
        let (lines, queued) = mpsc::sync_channel::<Entry>(capacity);
        std::thread::Builder::new()
            .name("percore-log".into())
            .spawn(move || {
                for Entry {
                    dropped_before,
                    text,
                } in queued
                {
                    if dropped_before > 0 {
                        let said = format!(
                            "percore: {dropped_before} log lines dropped: stderr did not take \
                             them in time"
                        );
                        write_line(&mut out, &said);
                    }
                    write_line(&mut out, &text);
                    counts.pending.fetch_sub(1, Ordering::SeqCst);
                }
            })?;
        Ok(Queue { lines, counts })
    }

    /// Never blocks: a full queue drops the line.
    fn line(&self, text: String) {
        self.counts.pending.fetch_add(1, Ordering::SeqCst);
        let dropped_before = self.counts.dropped.swap(0, Ordering::SeqCst);
        let entry = Entry {
            dropped_before,
            text,
        };
        if self.lines.try_send(entry).is_err() {
            self.counts.pending.fetch_sub(1, Ordering::SeqCst);
            self.counts
                .dropped
                .fetch_add(dropped_before + 1, Ordering::SeqCst);
        }
    }

    fn flush(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.counts.pending.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// One write per line, so lines of other writers to the same pipe do not cut into it. A closed
/// or broken stderr (a log shipper that restarted, `2>&-`) loses the line, not the process:
/// `eprintln!` panics when the write fails, and a panic ends the process.
fn write_line(out: &mut impl Write, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    let _ = out.write_all(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, Sender};

    /// A writer that blocks until the test lets it go on, like a pipe nobody reads, and hands
    /// what it wrote back to the test.
    struct Gated {
        entered: Sender<()>,
        open: Receiver<()>,
        written: Sender<String>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            let _ = self
                .written
                .send(String::from_utf8_lossy(bytes).into_owned());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_lines_without_blocking_and_says_how_many() {
        const CAPACITY: usize = 4;
        let (entered, writing) = mpsc::channel();
        let (gate, open) = mpsc::channel();
        let (written, lines) = mpsc::channel();
        let writer = Gated {
            entered,
            open,
            written,
        };
        let queue = Queue::start(writer, CAPACITY).unwrap();
        // The writer takes the first line and blocks in its write; CAPACITY more wait in the
        // queue; the 3 after them are dropped, and saying them never blocks this thread.
        queue.line("line 0".into());
        writing.recv().unwrap();
        for index in 1..1 + CAPACITY + 3 {
            queue.line(format!("line {index}"));
        }
        assert!(
            !queue.flush(Duration::from_millis(20)),
            "nothing written yet"
        );
        for _ in 0..1 + CAPACITY {
            gate.send(()).unwrap();
        }
        assert!(queue.flush(Duration::from_secs(10)));
        queue.line("after".into());
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        assert!(queue.flush(Duration::from_secs(10)));
        let got: Vec<String> = lines.try_iter().collect();
        let mut expected: Vec<String> = (0..1 + CAPACITY).map(|i| format!("line {i}\n")).collect();
        expected.push("percore: 3 log lines dropped: stderr did not take them in time\n".into());
        expected.push("after\n".into());
        assert_eq!(got, expected);
    }
}
