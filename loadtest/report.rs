//! Turns merged figures into the wrk-style text summary, the JSON document and the .hgrm file; never measures.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cli::Args;
use crate::stats::RunStats;

/// The percentiles every report shows, as (label, quantile).
pub const PERCENTILES: [(&str, f64); 6] = [
    ("50%", 0.50),
    ("75%", 0.75),
    ("90%", 0.90),
    ("99%", 0.99),
    ("99.9%", 0.999),
    ("99.99%", 0.9999),
];

/// How the run was driven, for headings.
pub struct RunShape<'a> {
    pub url: &'a str,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Open loop target rate; None in a closed loop.
    pub rate: Option<f64>,
}

/// wrk's `format_time`: microseconds as us, ms or s with two decimals.
pub fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// wrk's `format_metric`: 1234567 as 1.23M.
pub fn format_count(n: f64) -> String {
    if n < 1000.0 {
        format!("{n:.2}")
    } else if n < 1e6 {
        format!("{:.2}k", n / 1e3)
    } else if n < 1e9 {
        format!("{:.2}M", n / 1e6)
    } else {
        format!("{:.2}G", n / 1e9)
    }
}

fn format_bytes(n: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", units[unit])
}

/// Share of samples within mean ± stdev, as wrk prints it.
fn within_stdev_pct(h: &Histogram<u64>) -> f64 {
    let (mean, stdev) = (h.mean(), h.stdev());
    if h.is_empty() {
        return 0.0;
    }
    let inside: u64 = h
        .iter_recorded()
        .filter(|v| (v.value_iterated_to() as f64 - mean).abs() <= stdev)
        .map(|v| v.count_at_value())
        .sum();
    100.0 * inside as f64 / h.len() as f64
}

fn samples_line(samples: &[u64]) -> (f64, f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<u64>() as f64 / n;
    let stdev = (samples
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let max = samples.iter().copied().max().unwrap_or(0) as f64;
    let inside = samples
        .iter()
        .filter(|&&s| (s as f64 - mean).abs() <= stdev)
        .count() as f64;
    (mean, stdev, max, 100.0 * inside / n)
}

/// The one line that leads the output when anything failed.
pub fn error_headline(stats: &RunStats) -> Option<String> {
    let total = stats.error_total();
    (total > 0).then(|| {
        format!(
            "ERRORS: {total} errors in this run ({})",
            error_parts(stats)
        )
    })
}

fn error_parts(stats: &RunStats) -> String {
    let e = &stats.errors;
    format!(
        "connect {}, read {}, write {}, timeout {}, parse {}, closed {}, unanswered {}, client fds {}, status 4xx {}, status 5xx {}, other status {}",
        e.connect,
        e.read,
        e.write,
        e.timeout,
        e.parse,
        e.closed,
        e.unanswered,
        e.client_fds,
        stats.status.client_error,
        stats.status.server_error,
        stats.status.other
    )
}

fn distribution(out: &mut String, h: &Histogram<u64>) {
    for (label, q) in PERCENTILES {
        let _ = writeln!(
            out,
            "  {label:>8}  {:>9}",
            format_us(h.value_at_quantile(q) as f64)
        );
    }
    let _ = writeln!(out, "  {:>8}  {:>9}", "max", format_us(h.max() as f64));
}

/// The wrk-style summary, with the extra figures after it.
pub fn text(shape: &RunShape, stats: &RunStats) -> String {
    let mut out = String::new();
    if let Some(headline) = error_headline(stats) {
        let _ = writeln!(out, "{headline}");
    }
    // wrk prints whole seconds; keep a fraction only when there is one.
    let seconds = format!("{:.3}", shape.duration_s);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    let _ = writeln!(out, "Running {seconds}s test @ {}", shape.url);
    let mode = match shape.rate {
        Some(rate) => format!("open loop at {} req/s", format_count(rate)),
        None => "closed loop".to_string(),
    };
    let warmup = if shape.warmup_s > 0.0 {
        format!(", {:.1}s warm-up excluded", shape.warmup_s)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {} threads and {} connections, {mode}, pipeline {}{warmup}",
        shape.threads, shape.connections, shape.pipeline
    );
    let h = &stats.latency_us;
    let _ = writeln!(out, "  Thread Stats   Avg      Stdev     Max   +/- Stdev");
    let _ = writeln!(
        out,
        "    Latency {:>9} {:>9} {:>9} {:>8.2}%",
        format_us(h.mean()),
        format_us(h.stdev()),
        format_us(h.max() as f64),
        within_stdev_pct(h)
    );
    // A run shorter than a second has no whole-second sample: each thread's rate over its
    // window is then its only one (else the line would read 0).
    let samples = if stats.per_second_samples.is_empty() {
        stats
            .thread_rates
            .iter()
            .map(|r| r.round() as u64)
            .collect()
    } else {
        stats.per_second_samples.clone()
    };
    let (mean, stdev, max, within) = samples_line(&samples);
    let _ = writeln!(
        out,
        "    Req/Sec {:>9} {:>9} {:>9} {:>8.2}%",
        format_count(mean),
        format_count(stdev),
        format_count(max),
        within
    );
    match shape.rate {
        Some(_) => {
            let _ = writeln!(
                out,
                "  Latency Distribution (corrected: from each request's intended send time)"
            );
            distribution(&mut out, h);
            let _ = writeln!(
                out,
                "  Uncorrected Latency (from the actual send; hides coordinated omission)"
            );
            distribution(&mut out, &stats.latency_uncorrected_us);
        }
        None => {
            let _ = writeln!(out, "  Latency Distribution (per request, from its send)");
            distribution(&mut out, h);
        }
    }
    let _ = writeln!(
        out,
        "  {} requests in {:.2}s, {} read",
        stats.responses,
        stats.duration_s,
        format_bytes(stats.bytes_read as f64)
    );
    let _ = writeln!(
        out,
        "  Errors: {}; reconnects {}",
        error_parts(stats),
        stats.reconnects
    );
    if stats.errors.unanswered > 0 {
        let _ = writeln!(
            out,
            "  Sent and unanswered when the run ended: {}",
            stats.errors.unanswered
        );
    }
    if stats.unsent_at_end > 0 {
        let _ = writeln!(
            out,
            "  Due but never sent when the run ended: {} (in the latency, as waited until the end)",
            stats.unsent_at_end
        );
    }
    let per_thread: Vec<String> = stats
        .thread_rates
        .iter()
        .map(|r| format_count(*r))
        .collect();
    let _ = writeln!(out, "  Requests/sec per thread: {}", per_thread.join(", "));
    let _ = writeln!(out, "Requests/sec: {:>10.2}", stats.rate());
    let transfer = if stats.duration_s > 0.0 {
        stats.bytes_read as f64 / stats.duration_s
    } else {
        0.0
    };
    let _ = writeln!(out, "Transfer/sec: {:>10}", format_bytes(transfer));
    out
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let mut v = json!({
        "count": h.len(),
        "min": if h.is_empty() { 0 } else { h.min() },
        "mean": h.mean(),
        "stdev": h.stdev(),
        "max": h.max(),
    });
    for (key, q) in [
        ("p50", 0.5),
        ("p75", 0.75),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99_9", 0.999),
        ("p99_99", 0.9999),
    ] {
        v[key] = json!(h.value_at_quantile(q));
    }
    v
}

/// Every figure of one run as JSON.
pub fn run_json(shape: &RunShape, stats: &RunStats, names: &[String]) -> Value {
    let by_name: serde_json::Map<String, Value> = names
        .iter()
        .zip(&stats.responses_by_template)
        .map(|(n, c)| (n.clone(), json!(c)))
        .collect();
    let mut errors = serde_json::to_value(stats.errors).expect("plain struct");
    errors["total"] = json!(stats.error_total());
    json!({
        "mode": if shape.rate.is_some() { "open" } else { "closed" },
        "target_rate": shape.rate,
        "duration_s": stats.duration_s,
        "requests": stats.responses,
        "requests_sent": stats.requests_sent,
        "bytes_read": stats.bytes_read,
        "requests_per_s": stats.rate(),
        "thread_requests_per_s": stats.thread_rates,
        "latency_us": latency_json(&stats.latency_us),
        "latency_uncorrected_us": latency_json(&stats.latency_uncorrected_us),
        "errors": errors,
        "status": stats.status,
        "reconnects": stats.reconnects,
        "unanswered_at_end": stats.errors.unanswered,
        "unsent_at_end": stats.unsent_at_end,
        "requests_by_name": by_name,
    })
}

/// The whole JSON document: tool, parameters, machine, and the run (or find-max search).
/// `started_unix_s` is when the run started, not when the document is written.
pub fn document(args: &Args, started_unix_s: u64, run: Value, find_max: Option<Value>) -> Value {
    let mut doc = json!({
        "tool": "percore-load",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix_s": started_unix_s,
        "params": args,
        "system": crate::machine::describe(),
        "run": run,
    });
    if let Some(f) = find_max {
        doc["find_max"] = f;
    }
    doc
}

/// HdrHistogram's percentile distribution text (as wrk2 and HdrHistogram's plotter read it), values in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{ms:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{ms:>12.3} {q:>14.12} {total:>10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        // HdrHistogram's sub-bucket count: 2 * 10^digits, rounded up to a power of two.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_us(250.0), "250.00us");
        assert_eq!(format_us(1500.0), "1.50ms");
        assert_eq!(format_us(2_500_000.0), "2.50s");
        assert_eq!(format_count(999.0), "999.00");
        assert_eq!(format_count(56_200.0), "56.20k");
        assert_eq!(format_count(2_246_445.0), "2.25M");
        assert_eq!(format_bytes(3.3 * 1024.0 * 1024.0 * 1024.0), "3.30GB");
    }

    #[test]
    fn hgrm_ends_at_max() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value"));
        assert!(
            text.contains("#[Max     =        1.000, Total count    =         1000]"),
            "{text}"
        );
    }
}
