//! `--find-max`: steps the open-loop rate up, then bisects, to find the highest rate that keeps p99 under a bound with no errors; runs nothing itself.

use serde::Serialize;

use crate::limits;
use crate::stats::RunStats;

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub p99_us: u64,
    pub errors: u64,
    pub passed: bool,
    /// Why a step failed: "p99", "errors" or "rate" (the server could not keep up).
    pub reason: Option<&'static str>,
}

/// The outcome: every step, and the highest passing rate (the knee).
#[derive(Clone, Debug, Serialize)]
pub struct Search {
    pub p99_max_us: u64,
    pub steps: Vec<StepResult>,
    pub knee_rate: Option<f64>,
    pub first_failing_rate: Option<f64>,
}

pub fn judge(target_rate: f64, stats: &RunStats, p99_max_us: u64) -> StepResult {
    let p99_us = stats.latency_us.value_at_quantile(0.99);
    let errors = stats.error_total();
    let achieved_rate = stats.rate();
    let reason = if errors > 0 {
        Some("errors")
    } else if p99_us > p99_max_us {
        Some("p99")
    } else if achieved_rate < target_rate * limits::FIND_MAX_ACHIEVED_SHARE_MIN {
        Some("rate")
    } else {
        None
    };
    StepResult {
        target_rate,
        achieved_rate,
        p99_us,
        errors,
        passed: reason.is_none(),
        reason,
    }
}

/// Runs the search; `step(rate)` runs one open-loop run and returns its verdict. Grows the rate
/// geometrically until a step fails, then bisects between the last pass and the first failure.
pub fn search(start_rate: f64, p99_max_us: u64, mut step: impl FnMut(f64) -> StepResult) -> Search {
    let mut steps = Vec::new();
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut rate = start_rate;
    while steps.len() < limits::FIND_MAX_STEPS_MAX {
        let result = step(rate);
        let passed = result.passed;
        steps.push(result);
        if !passed {
            bad = Some(rate);
            break;
        }
        good = Some(rate);
        if rate >= limits::RATE_MAX {
            break;
        }
        // Capped: unchecked, the steps passed the highest rate a schedule can mean (found in
        // review).
        rate = (rate * limits::FIND_MAX_GROWTH).min(limits::RATE_MAX);
    }
    if let (Some(_), Some(_)) = (good, bad) {
        for _ in 0..limits::FIND_MAX_BISECT_STEPS {
            let (low, high) = (good.unwrap_or(start_rate), bad.unwrap_or(start_rate));
            let middle = (low + high) / 2.0;
            let result = step(middle);
            if result.passed {
                good = Some(middle)
            } else {
                bad = Some(middle)
            }
            steps.push(result);
        }
    }
    Search {
        p99_max_us,
        steps,
        knee_rate: good,
        first_failing_rate: bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(capacity: f64) -> impl FnMut(f64) -> StepResult {
        move |rate| StepResult {
            target_rate: rate,
            achieved_rate: rate,
            p99_us: if rate <= capacity { 100 } else { 100_000 },
            errors: 0,
            passed: rate <= capacity,
            reason: (rate > capacity).then_some("p99"),
        }
    }

    #[test]
    fn finds_the_knee() {
        let s = search(1000.0, 1000, fake(5000.0));
        let knee = s.knee_rate.unwrap();
        assert!(knee <= 5000.0 && knee > 5000.0 * 0.8, "{s:?}");
        assert!(s.first_failing_rate.unwrap() > 5000.0);
    }

    #[test]
    fn start_rate_already_fails() {
        let s = search(1000.0, 1000, fake(10.0));
        assert_eq!(
            (s.knee_rate, s.first_failing_rate, s.steps.len()),
            (None, Some(1000.0), 1)
        );
    }
}
