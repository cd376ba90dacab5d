//! Per-thread counters and latency histograms, and their merge at the end of a run; never does IO.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::limits;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(
        limits::LATENCY_US_MIN,
        limits::LATENCY_US_MAX,
        limits::LATENCY_SIGNIFICANT_DIGITS,
    )
    .expect("histogram bounds are constants that HdrHistogram accepts")
}

/// Failures, by where they happened. Status classes are counted apart, in `StatusCounts`.
///
/// `timeout`, `closed` and `unanswered` count requests, so that every measured request is
/// accounted for once: `requests_sent = responses + timeout + closed + unanswered`. `connect`,
/// `read`, `write`, `parse` and `client_fds` count events (one read error may lose several
/// pipelined requests, which are then also in `closed`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    /// Responses that could not be framed (bad head, bad chunk, a close inside a response).
    pub parse: u64,
    /// Requests in flight when their connection closed, lost without an answer: after an
    /// error or a timeout on the connection, or after the server closed twice without a word
    /// with the request in flight (the first time it is sent again; see `engine::Cause`), or
    /// once, on a connection that had answered nothing.
    pub closed: u64,
    /// Requests sent and still unanswered when the run (and its drain) ended.
    pub unanswered: u64,
    /// Connections not even tried because the client had no file descriptor left (EMFILE or
    /// ENFILE from socket()): the client's failure, never counted as the server's `connect`.
    pub client_fds: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.read
            + self.write
            + self.timeout
            + self.parse
            + self.closed
            + self.unanswered
            + self.client_fds
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.parse += o.parse;
        self.closed += o.closed;
        self.unanswered += o.unanswered;
        self.client_fds += o.client_fds;
    }
}

/// Responses by status class.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct StatusCounts {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    pub other: u64,
}

impl StatusCounts {
    #[inline]
    pub fn count(&mut self, status: u16) {
        match status / 100 {
            1 => self.informational += 1,
            2 => self.success += 1,
            3 => self.redirect += 1,
            4 => self.client_error += 1,
            5 => self.server_error += 1,
            _ => self.other += 1,
        }
    }

    /// Responses that count as errors: 4xx, 5xx and statuses outside 100..=599.
    pub fn errors(&self) -> u64 {
        self.client_error + self.server_error + self.other
    }

    fn add(&mut self, o: &StatusCounts) {
        self.informational += o.informational;
        self.success += o.success;
        self.redirect += o.redirect;
        self.client_error += o.client_error;
        self.server_error += o.server_error;
        self.other += o.other;
    }
}

/// What one client thread measured inside the measurement window.
pub struct ThreadStats {
    /// Latency from each request's intended send time (open loop), or from its send (closed loop).
    pub latency_us: Histogram<u64>,
    /// Latency from the actual send, in both modes. Equal to `latency_us` in a closed loop.
    pub latency_uncorrected_us: Histogram<u64>,
    pub responses: u64,
    pub requests_sent: u64,
    pub bytes_read: u64,
    pub status: StatusCounts,
    pub errors: Errors,
    /// Connections opened again after the server closed one or after an error.
    pub reconnects: u64,
    /// Responses per template (same order as the mix's templates).
    pub responses_by_template: Vec<u64>,
    /// Responses completed in each whole second of the measurement window.
    pub responses_per_second: Vec<u64>,
    /// Open loop: requests the schedule wanted before the end that were never sent (the
    /// connection's `--pipeline` slots were full, or it was down), and requests lost to a close
    /// that were not sent again before the end. Not errors: no server ever saw them, and a run
    /// that ends while one slow response holds a slot would otherwise fail by chance. A server
    /// that cannot keep up shows in the corrected latency and in the achieved rate instead.
    pub unsent_at_end: u64,
    /// Nanoseconds from the start of measurement to this thread's last completion.
    pub measured_ns: u64,
}

impl ThreadStats {
    pub fn new(templates: usize) -> ThreadStats {
        ThreadStats {
            latency_us: new_histogram(),
            latency_uncorrected_us: new_histogram(),
            responses: 0,
            requests_sent: 0,
            bytes_read: 0,
            status: StatusCounts::default(),
            errors: Errors::default(),
            reconnects: 0,
            responses_by_template: vec![0; templates],
            responses_per_second: Vec::new(),
            unsent_at_end: 0,
            measured_ns: 0,
        }
    }
}

/// All threads merged.
pub struct RunStats {
    pub latency_us: Histogram<u64>,
    pub latency_uncorrected_us: Histogram<u64>,
    pub responses: u64,
    pub requests_sent: u64,
    pub bytes_read: u64,
    pub status: StatusCounts,
    pub errors: Errors,
    pub reconnects: u64,
    pub responses_by_template: Vec<u64>,
    pub unsent_at_end: u64,
    /// Seconds of the measurement window (the longest thread's).
    pub duration_s: f64,
    /// Requests per second achieved by each thread over its own window.
    pub thread_rates: Vec<f64>,
    /// Every thread's per-second samples, for the wrk-style "Req/Sec" line.
    pub per_second_samples: Vec<u64>,
}

impl RunStats {
    pub fn merge(threads: Vec<ThreadStats>) -> RunStats {
        let templates = threads.first().map_or(0, |t| t.responses_by_template.len());
        let mut run = RunStats {
            latency_us: new_histogram(),
            latency_uncorrected_us: new_histogram(),
            responses: 0,
            requests_sent: 0,
            bytes_read: 0,
            status: StatusCounts::default(),
            errors: Errors::default(),
            reconnects: 0,
            responses_by_template: vec![0; templates],
            unsent_at_end: 0,
            duration_s: 0.0,
            thread_rates: Vec::new(),
            per_second_samples: Vec::new(),
        };
        for t in &threads {
            run.latency_us
                .add(&t.latency_us)
                .expect("histograms share bounds");
            run.latency_uncorrected_us
                .add(&t.latency_uncorrected_us)
                .expect("histograms share bounds");
            run.responses += t.responses;
            run.requests_sent += t.requests_sent;
            run.bytes_read += t.bytes_read;
            run.status.add(&t.status);
            run.errors.add(&t.errors);
            run.reconnects += t.reconnects;
            for (sum, n) in run
                .responses_by_template
                .iter_mut()
                .zip(&t.responses_by_template)
            {
                *sum += n;
            }
            run.unsent_at_end += t.unsent_at_end;
            let seconds = t.measured_ns as f64 / 1e9;
            run.duration_s = run.duration_s.max(seconds);
            run.thread_rates.push(if seconds > 0.0 {
                t.responses as f64 / seconds
            } else {
                0.0
            });
            run.per_second_samples.extend(&t.responses_per_second);
        }
        run
    }

    pub fn rate(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.responses as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// Every error of any kind, status errors and requests unanswered at the end included.
    pub fn error_total(&self) -> u64 {
        self.errors.total() + self.status.errors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let mut s = StatusCounts::default();
        for code in [100, 200, 204, 301, 404, 500, 503, 99, 600] {
            s.count(code);
        }
        assert_eq!(
            (
                s.informational,
                s.success,
                s.redirect,
                s.client_error,
                s.server_error,
                s.other
            ),
            (1, 2, 1, 1, 2, 2)
        );
        assert_eq!(s.errors(), 5);
    }

    #[test]
    fn merges() {
        let mut a = ThreadStats::new(2);
        let mut b = ThreadStats::new(2);
        a.latency_us.record(100).unwrap();
        b.latency_us.record(300).unwrap();
        a.responses = 10;
        b.responses = 30;
        a.measured_ns = 1_000_000_000;
        b.measured_ns = 2_000_000_000;
        a.errors.read = 1;
        b.errors.unanswered = 3;
        b.status.count(500);
        b.responses_by_template = vec![1, 2];
        let run = RunStats::merge(vec![a, b]);
        assert_eq!(run.latency_us.len(), 2);
        assert_eq!(run.responses, 40);
        assert_eq!(run.duration_s, 2.0);
        assert_eq!(run.thread_rates, vec![10.0, 15.0]);
        assert_eq!(run.error_total(), 5);
        assert_eq!(run.responses_by_template, vec![1, 2]);
    }
}
