//! S5's hold-off after an automatic failover, measured by monotonic clocks.
//!
//! Comparing the wall clock of whichever node leads now with the one that
//! finished the failover lets a clock step (NTP, an operator, a VM resume) lift
//! the hold-off early. Instead the leader measures it with its monotonic clock
//! and commits what it measured in ticks (`Request::HoldoffElapsed`), so the
//! replicated `PairRecord::holdoff_elapsed_ms` only grows by real elapsed time. A
//! new leader starts counting from its own election: the time between the last
//! committed tick and the election is not counted, which only lengthens the
//! hold-off (the safe direction). The detector reads the committed value plus
//! the leader's own time since its last tick ([`HoldoffClock::view`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::state::PairRecord;

/// How often a running hold-off is committed.
pub const TICK: Duration = Duration::from_secs(5);

/// One leader's view of the hold-offs it is measuring.
#[derive(Debug, Default)]
pub struct HoldoffClock {
    /// Per pair: the epoch of the failover being held off, and when this
    /// leader last committed (or started measuring) its elapsed time.
    last: HashMap<String, (u64, Instant)>,
}

/// A hold-off (S5) is being measured for `pair`: its clock ticks with time.
pub fn running(pair: &PairRecord, holdoff_ms: u64) -> bool {
    pair.last_auto_failover_unix_ms.is_some()
        && !pair.flap_acknowledged
        && pair.holdoff_elapsed_ms < holdoff_ms
}

impl HoldoffClock {
    fn since(&mut self, pair: &PairRecord, now: Instant) -> Duration {
        let e = self
            .last
            .entry(pair.spec.id.clone())
            .or_insert((pair.epoch, now));
        if e.0 != pair.epoch {
            *e = (pair.epoch, now);
        }
        now.saturating_duration_since(e.1)
    }

    /// The pair as the detector should see it now: the committed hold-off time
    /// plus this leader's monotonic time since its last tick. Borrowed (no copy
    /// of the record on the leader's hot path) when no hold-off runs.
    pub fn view<'a>(
        &mut self,
        pair: &'a PairRecord,
        now: Instant,
        holdoff_ms: u64,
    ) -> Cow<'a, PairRecord> {
        if !running(pair, holdoff_ms) {
            self.last.remove(&pair.spec.id);
            return Cow::Borrowed(pair);
        }
        let extra = self.since(pair, now).as_millis() as u64;
        let mut p = pair.clone();
        p.holdoff_elapsed_ms = p.holdoff_elapsed_ms.saturating_add(extra);
        Cow::Owned(p)
    }

    /// Milliseconds to commit now (`Request::HoldoffElapsed`), if a tick is due.
    pub fn due(&mut self, pair: &PairRecord, now: Instant, holdoff_ms: u64) -> Option<u64> {
        if !running(pair, holdoff_ms) {
            return None;
        }
        let since = self.since(pair, now);
        let left = Duration::from_millis(holdoff_ms - pair.holdoff_elapsed_ms);
        (since >= TICK || since >= left).then(|| since.as_millis() as u64)
    }

    /// The tick measured at `now` was committed.
    pub fn ticked(&mut self, pair: &PairRecord, now: Instant) {
        self.last.insert(pair.spec.id.clone(), (pair.epoch, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PairState;
    use crate::testutil::pair;

    const HOLD: u64 = 60_000;

    #[test]
    fn measures_monotonic_time_and_ticks_every_few_seconds() {
        let mut p = pair(PairState::Degraded);
        p.last_auto_failover_unix_ms = Some(123);
        let t0 = Instant::now();
        let mut c = HoldoffClock::default();
        assert_eq!(c.view(&p, t0, HOLD).holdoff_elapsed_ms, 0);
        assert_eq!(c.due(&p, t0 + Duration::from_secs(1), HOLD), None);
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(c.view(&p, t1, HOLD).holdoff_elapsed_ms, 6000);
        let add = c.due(&p, t1, HOLD).expect("a tick is due");
        assert_eq!(add, 6000);
        // Committed: the replicated value grows; the local count restarts.
        p.holdoff_elapsed_ms += add;
        c.ticked(&p, t1);
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(c.view(&p, t2, HOLD).holdoff_elapsed_ms, 8000);
        assert_eq!(c.due(&p, t2, HOLD), None);
    }

    #[test]
    fn a_new_failover_acknowledgement_or_end_resets_it() {
        let mut p = pair(PairState::Degraded);
        p.last_auto_failover_unix_ms = Some(1);
        let t0 = Instant::now();
        let mut c = HoldoffClock::default();
        c.view(&p, t0, HOLD);
        p.epoch += 1;
        assert_eq!(
            c.view(&p, t0 + Duration::from_secs(9), HOLD)
                .holdoff_elapsed_ms,
            0
        );
        p.flap_acknowledged = true;
        assert_eq!(c.due(&p, t0 + Duration::from_secs(99), HOLD), None);
        p.flap_acknowledged = false;
        p.holdoff_elapsed_ms = HOLD;
        assert_eq!(c.due(&p, t0 + Duration::from_secs(99), HOLD), None);
        // The last tick is due early when less than a tick remains.
        p.holdoff_elapsed_ms = HOLD - 1000;
        let mut c = HoldoffClock::default();
        c.view(&p, t0, HOLD);
        assert_eq!(
            c.due(&p, t0 + Duration::from_millis(1500), HOLD),
            Some(1500)
        );
    }
}
