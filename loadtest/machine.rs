//! Describes the machine a run happened on (kernel, CPU model, CPU count) for the JSON report; reads /proc only.

use serde_json::{Value, json};

pub fn describe() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "kernel": kernel, "cpu_model": cpu_model, "cpus_available": cpus, "os": std::env::consts::OS })
}
