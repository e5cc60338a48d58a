//! When the agent dials a controller again after a session did not get going.
//!
//! Thousands of agents lose their sessions together when a leader dies or
//! stands down. Dialling again after a fixed pause makes them arrive in step:
//! each wave of TLS handshakes keeps the new leader busy enough to time some
//! of them out, and those come back with the next wave (at 2000 pairs, 79 000
//! sessions in 600 s once, without settling). But a leader change must stay
//! quick: the new leader counts an agent silent from its own election, and
//! takes a backup silent for `agent_timeout_ms` (1 s) for gone.
//!
//! So for the first [`QUICK`] of a streak of failures (an election, a
//! redirect to the leader that just died) the agent dials again every
//! 50–100 ms. Past it, consecutive failures back off exponentially, each pause
//! jittered over its upper half:
//!
//! | failures past the first 3 s | pause |
//! | --- | --- |
//! | 1 | 100–200 ms |
//! | 2 | 200–400 ms |
//! | 3 | 400–800 ms |
//! | 4 and more | 0.5–1 s (the cap) |
//!
//! Any answer from a controller ends the streak: the leader's `Welcome`, or a
//! follower's redirect. Waiting for an election (a follower knows no leader
//! yet) pauses 50–150 ms each time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// The pause's upper bound while quick, and the unit of the back-off.
pub const BASE: Duration = Duration::from_millis(100);
/// The longest pause between two dials: short, because after the controllers
/// come back (all of them restarted, say) the new leader gives an agent it has
/// not heard from `agent_timeout_ms` (1 s) from its election before it counts
/// the server gone. The controller sheds what it cannot handshake in time
/// (`acceptor.rs`), cheaply; this spreads the dials.
pub const CAP: Duration = Duration::from_secs(1);
/// How long a streak of failures dials again quickly: an election and the
/// redirects around it (a follower may still name the dead leader).
pub const QUICK: Duration = Duration::from_secs(3);

/// Consecutive failed dials, and the pause before the next.
#[derive(Debug)]
pub struct Redial {
    failures: u32,
    /// Failures after the quick phase.
    slow: u32,
    /// When the streak's first failure was.
    streak: Option<Instant>,
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
            slow: 0,
            streak: None,
            random: Random::new(),
        }
    }

    /// A controller answered (the leader's `Welcome`, a follower's redirect):
    /// the streak of failures is over.
    pub fn answered(&mut self) {
        self.failures = 0;
        self.slow = 0;
        self.streak = None;
    }

    /// Failed dials since a controller last answered.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The pause after one more failure.
    pub fn after_failure(&mut self) -> Duration {
        self.after_failure_at(Instant::now())
    }

    /// The pause after one more failure at `now`: 50–100 ms within [`QUICK`]
    /// of the streak's first failure, then the upper half of
    /// `min(CAP, BASE × 2^slow failures)`, at random.
    pub fn after_failure_at(&mut self, now: Instant) -> Duration {
        let since = *self.streak.get_or_insert(now);
        self.failures = self.failures.saturating_add(1);
        let upper = if now.saturating_duration_since(since) < QUICK {
            BASE
        } else {
            self.slow = self.slow.saturating_add(1);
            Self::upper_bound(self.slow)
        };
        upper / 2 + self.random.below(upper / 2)
    }

    /// The pause while the controllers elect a leader: 50–150 ms.
    pub fn awaiting_leader(&mut self) -> Duration {
        Duration::from_millis(50) + self.random.below(Duration::from_millis(100))
    }

    /// The upper bound of the pause after `slow` failures past the quick phase.
    pub fn upper_bound(slow: u32) -> Duration {
        BASE.saturating_mul(1u32 << slow.min(16)).min(CAP)
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

    fn within(d: Duration, lo_ms: u64, hi_ms: u64) -> bool {
        d >= Duration::from_millis(lo_ms) && d < Duration::from_millis(hi_ms)
    }

    #[test]
    fn quick_for_the_first_seconds_of_a_streak_then_doubling_up_to_the_cap() {
        let mut r = Redial::new();
        let t0 = Instant::now();
        // An election with redirects to the dead leader: 2.9 s of failures,
        // every pause 50-100 ms.
        let mut t = t0;
        while t < t0 + Duration::from_millis(2900) {
            let d = r.after_failure_at(t);
            assert!(within(d, 50, 100), "{d:?} at {:?}", t - t0);
            t += d + Duration::from_millis(20);
        }
        // Past 3 s: 100-200, 200-400, then 0.5-1 s, and there it stays.
        let mut upper = Duration::from_millis(200);
        for n in 1..=10u32 {
            let d = r.after_failure_at(t0 + Duration::from_secs(3) + Duration::from_secs(n as u64));
            assert!(
                d >= upper / 2 && d < upper,
                "slow failure {n}: {d:?}, bound {upper:?}"
            );
            upper = (upper * 2).min(CAP);
        }
        assert_eq!(Redial::upper_bound(4), CAP);
        assert_eq!(Redial::upper_bound(u32::MAX), CAP);
    }

    #[test]
    fn an_answer_from_a_controller_ends_the_streak() {
        let mut r = Redial::new();
        let t0 = Instant::now();
        for n in 0..8 {
            r.after_failure_at(t0 + Duration::from_secs(n));
        }
        assert_eq!(r.failures(), 8);
        r.answered();
        assert_eq!(r.failures(), 0);
        // The next streak starts quick again, hours later or not.
        let d = r.after_failure_at(t0 + Duration::from_secs(3600));
        assert!(within(d, 50, 100), "{d:?}");
    }

    #[test]
    fn waiting_for_an_election_neither_grows_nor_counts() {
        let mut r = Redial::new();
        for _ in 0..50 {
            assert!(within(r.awaiting_leader(), 50, 150));
        }
        assert_eq!(r.failures(), 0);
    }

    #[test]
    fn many_agents_failing_for_long_spread_their_next_dials() {
        // 4000 agents whose dials kept failing for 5 s (a leader too busy to
        // handshake): their fourth slow pause falls over 0.5-1 s, and no
        // 20 ms slice holds more than a few percent of them.
        let t0 = Instant::now();
        let mut slices = [0u32; 40];
        for _ in 0..4000 {
            let mut r = Redial::new();
            r.after_failure_at(t0);
            for n in 1..=3u64 {
                r.after_failure_at(t0 + Duration::from_secs(3 + n));
            }
            let d = r.after_failure_at(t0 + Duration::from_secs(8));
            assert!(within(d, 500, 1000), "{d:?}");
            slices[((d.as_millis() - 500) / 20) as usize] += 1;
        }
        let max = *slices.iter().max().unwrap();
        assert!(
            max < 250,
            "{max} of 4000 dials in one 20 ms slice: {slices:?}"
        );
    }
}
