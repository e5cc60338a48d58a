//! When the agent dials a controller again after a session did not get going.
//!
//! Thousands of agents lose their sessions together when a leader dies or
//! stands down. Dialling again after a fixed pause makes them arrive in step:
//! each wave of TLS handshakes keeps the new leader busy enough to time some
//! of them out, and those come back with the next wave (at 2000 pairs, 79 000
//! sessions in 600 s once, without settling). So consecutive failures back
//! off exponentially, and every pause is jittered over its upper half:
//!
//! | failures in a row | pause |
//! | --- | --- |
//! | 1 | 50–100 ms |
//! | 2 | 100–200 ms |
//! | 3 | 200–400 ms |
//! | … | … |
//! | 7 and more | 2–4 s (the cap) |
//!
//! A session that reached the leader's `Welcome` resets the count: after a
//! healthy session broke (the leader was killed) the next dial is quick, and
//! so is the one after it (that controller is down too). Waiting for an
//! election (a follower knows no leader yet) pauses 50–150 ms each time and
//! does not count as a failure: the first agents should reach the new leader
//! within a heartbeat of its election.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first pause after a failure (its upper bound).
pub const BASE: Duration = Duration::from_millis(100);
/// The longest pause between two dials.
pub const CAP: Duration = Duration::from_secs(4);

/// Consecutive failed dials, and the pause before the next.
#[derive(Debug)]
pub struct Redial {
    failures: u32,
    random: Random,
}

impl Default for Redial {
    fn default() -> Self {
        Self::new()
    }
}

impl Redial {
    pub fn new() -> Self {
        Redial {
            failures: 0,
            random: Random::new(),
        }
    }

    /// The session reached the leader: the next failure pauses briefly again.
    pub fn established(&mut self) {
        self.failures = 0;
    }

    /// Failed dials since the last session that reached the leader.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The pause after one more failure: the upper half of
    /// `min(CAP, BASE × 2^(failures - 1))`, at random.
    pub fn after_failure(&mut self) -> Duration {
        let upper = Self::upper_bound(self.failures);
        self.failures = self.failures.saturating_add(1);
        upper / 2 + self.random.below(upper / 2)
    }

    /// The pause while the controllers elect a leader: 50–150 ms.
    pub fn awaiting_leader(&mut self) -> Duration {
        Duration::from_millis(50) + self.random.below(Duration::from_millis(100))
    }

    /// The upper bound of the pause after `failures` earlier failures.
    pub fn upper_bound(failures: u32) -> Duration {
        BASE.saturating_mul(1u32 << failures.min(16)).min(CAP)
    }
}

/// A small pseudo-random sequence (splitmix64), seeded from std's per-process
/// random hash keys: enough to spread dials, no extra dependency.
#[derive(Debug)]
struct Random(u64);

impl Random {
    fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        Random(h.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, d)` (zero for a zero `d`), at microsecond resolution.
    fn below(&mut self, d: Duration) -> Duration {
        let us = d.as_micros() as u64;
        if us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next() % us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_within_their_upper_half() {
        let mut r = Redial::new();
        let mut upper = Duration::from_millis(100);
        for n in 0..12 {
            let d = r.after_failure();
            assert!(
                d >= upper / 2 && d < upper,
                "failure {}: {d:?} not in [{:?}, {upper:?})",
                n + 1,
                upper / 2
            );
            upper = (upper * 2).min(CAP);
        }
        assert_eq!(r.failures(), 12);
        assert_eq!(Redial::upper_bound(6), CAP);
        assert_eq!(Redial::upper_bound(u32::MAX), CAP);
    }

    #[test]
    fn a_session_that_reached_the_leader_resets_the_back_off() {
        let mut r = Redial::new();
        for _ in 0..8 {
            r.after_failure();
        }
        r.established();
        assert_eq!(r.failures(), 0);
        let d = r.after_failure();
        assert!(d >= Duration::from_millis(50) && d < BASE, "{d:?}");
    }

    #[test]
    fn waiting_for_an_election_neither_grows_nor_counts() {
        let mut r = Redial::new();
        for _ in 0..50 {
            let d = r.awaiting_leader();
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
        assert_eq!(r.failures(), 0);
    }

    #[test]
    fn many_agents_failing_together_spread_their_next_dials() {
        // 4000 agents after their fourth failure in a row: the dials fall over
        // 400–800 ms; no 10 ms slice holds more than a few percent of them.
        let mut slices = [0u32; 40];
        for _ in 0..4000 {
            let mut r = Redial::new();
            for _ in 0..3 {
                r.after_failure();
            }
            let d = r.after_failure();
            assert!(d >= Duration::from_millis(400) && d < Duration::from_millis(800));
            slices[((d.as_millis() - 400) / 10) as usize] += 1;
        }
        let max = *slices.iter().max().unwrap();
        assert!(
            max < 200,
            "{max} of 4000 dials in one 10 ms slice: {slices:?}"
        );
    }
}
