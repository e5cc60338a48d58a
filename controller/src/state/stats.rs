//! What a pair's plans did, kept in the replicated state so every node reports
//! the same numbers and a leader change resets nothing: plans finished by kind
//! and outcome, step durations as histograms, and the last finished failover
//! and rebuild with their steps (the dashboard's timeline, SPEC §6).
//!
//! Updated only by [`super::ClusterState::apply`] (deterministic: durations are
//! the ones committed in the step records).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StepStatus;

/// Upper bounds (ms) of the step-duration histogram buckets; a last bucket
/// (`+Inf`) takes the rest.
pub const STEP_BUCKETS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// One histogram: counts per bucket (not cumulative; the last one is `+Inf`),
/// their sum and count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum_ms: u64,
    pub count: u64,
}

impl Histogram {
    /// Count one observation of `ms`.
    pub fn observe(&mut self, ms: u64) {
        if self.buckets.len() != STEP_BUCKETS_MS.len() + 1 {
            self.buckets.resize(STEP_BUCKETS_MS.len() + 1, 0);
        }
        let i = STEP_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(STEP_BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }

    /// Add another histogram's counts (aggregating pairs).
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
        self.count += other.count;
    }

    /// `(upper bound ms or None for +Inf, cumulative count)`, as Prometheus
    /// exposes buckets.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut acc = 0;
        (0..=STEP_BUCKETS_MS.len())
            .map(|i| {
                acc += self.buckets.get(i).copied().unwrap_or(0);
                (STEP_BUCKETS_MS.get(i).copied(), acc)
            })
            .collect()
    }
}

/// A step of a finished plan, as the timeline draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedStep {
    pub step: String,
    /// `done`, `failed`, or `pending` (never ran).
    pub status: String,
    pub duration_ms: Option<u64>,
    pub detail: String,
    pub attempts: u32,
}

impl FinishedStep {
    /// A step record as the timeline shows it.
    pub fn of(step: &str, status: &StepStatus, attempts: u32) -> FinishedStep {
        let (status, duration_ms, detail) = match status {
            StepStatus::Pending => ("pending", None, String::new()),
            StepStatus::Running { .. } => ("interrupted", None, String::new()),
            StepStatus::Done {
                duration_ms,
                detail,
            } => ("done", Some(*duration_ms), detail.clone()),
            StepStatus::Failed {
                duration_ms,
                reason,
            } => ("failed", Some(*duration_ms), reason.clone()),
        };
        FinishedStep {
            step: step.to_string(),
            status: status.into(),
            duration_ms,
            detail,
            attempts,
        }
    }
}

/// A finished plan (failover, switchover, promotion, reattach or rebuild).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedPlan {
    /// `failover`, `reattach`, `promote`, `switchover` or `rebuild`.
    pub kind: String,
    /// The failover epoch, or the rebuild's id.
    pub epoch: u64,
    pub from: String,
    pub to: String,
    pub automatic: bool,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// `succeeded` or `failed`.
    pub outcome: String,
    /// The pair state the plan ended in, or the rebuild's reason.
    pub end: String,
    pub steps: Vec<FinishedStep>,
}

/// Per pair: what its plans did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStats {
    /// Plans finished, keyed `"{kind}/{outcome}"`.
    #[serde(default)]
    pub finished: BTreeMap<String, u64>,
    /// Step durations (done or failed), keyed `"{kind}/{step}"`.
    #[serde(default)]
    pub steps: BTreeMap<String, Histogram>,
    #[serde(default)]
    pub last_failover: Option<FinishedPlan>,
    #[serde(default)]
    pub last_rebuild: Option<FinishedPlan>,
}

impl PairStats {
    /// A step of a plan of `kind` ended after `duration_ms`.
    pub fn observe_step(&mut self, kind: &str, step: &str, duration_ms: u64) {
        self.steps
            .entry(format!("{kind}/{step}"))
            .or_default()
            .observe(duration_ms);
    }

    /// A plan ended: counted, and kept as the last of its family.
    pub fn finish(&mut self, plan: FinishedPlan) {
        *self
            .finished
            .entry(format!("{}/{}", plan.kind, plan.outcome))
            .or_default() += 1;
        if plan.kind == "rebuild" {
            self.last_rebuild = Some(plan);
        } else {
            self.last_failover = Some(plan);
        }
    }

    /// `(kind, outcome, count)` of the plans finished.
    pub fn finished_by_kind(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.finished.iter().map(|(k, n)| {
            let (kind, outcome) = k.split_once('/').unwrap_or((k.as_str(), ""));
            (kind, outcome, *n)
        })
    }

    /// `(kind, step, histogram)` of the step durations.
    pub fn step_histograms(&self) -> impl Iterator<Item = (&str, &str, &Histogram)> {
        self.steps.iter().map(|(k, h)| {
            let (kind, step) = k.split_once('/').unwrap_or((k.as_str(), ""));
            (kind, step, h)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_buckets_every_duration_once() {
        let mut h = Histogram::default();
        for ms in [0, 5, 6, 999, 1_000, 1_001, 60_000, 60_001, u64::MAX / 4] {
            h.observe(ms);
        }
        assert_eq!(h.count, 9);
        assert_eq!(h.buckets.iter().sum::<u64>(), 9);
        let c = h.cumulative();
        assert_eq!(c.len(), STEP_BUCKETS_MS.len() + 1);
        assert_eq!(c[0], (Some(5), 2)); // 0 and 5 (upper bounds inclusive)
        assert_eq!(c[1], (Some(10), 3));
        assert_eq!(c[7], (Some(1_000), 5));
        assert_eq!(c[12], (Some(60_000), 7));
        assert_eq!(c[13], (None, 9));
        // Cumulative counts never decrease.
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count, 18);
        assert_eq!(m.cumulative()[13].1, 18);
        assert_eq!(m.sum_ms, 2 * h.sum_ms);
    }

    #[test]
    fn finished_plans_are_counted_by_kind_and_outcome_and_kept_by_family() {
        let mut s = PairStats::default();
        let plan = |kind: &str, outcome: &str| FinishedPlan {
            kind: kind.into(),
            epoch: 1,
            from: "a".into(),
            to: "b".into(),
            automatic: true,
            started_unix_ms: 0,
            finished_unix_ms: 10,
            outcome: outcome.into(),
            end: "Degraded".into(),
            steps: vec![],
        };
        s.finish(plan("failover", "succeeded"));
        s.finish(plan("failover", "succeeded"));
        s.finish(plan("switchover", "failed"));
        s.finish(plan("rebuild", "succeeded"));
        let v: Vec<_> = s.finished_by_kind().collect();
        assert_eq!(
            v,
            vec![
                ("failover", "succeeded", 2),
                ("rebuild", "succeeded", 1),
                ("switchover", "failed", 1)
            ]
        );
        assert_eq!(s.last_failover.as_ref().unwrap().kind, "switchover");
        assert_eq!(s.last_rebuild.as_ref().unwrap().kind, "rebuild");
        s.observe_step("failover", "Promote", 12);
        s.observe_step("failover", "Promote", 40);
        let h: Vec<_> = s.step_histograms().collect();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].0, h[0].1, h[0].2.count), ("failover", "Promote", 2));
    }
}
