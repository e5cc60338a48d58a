//! Resync progress and its ETA from the observed rate: every report of a
//! SyncTarget's out-of-sync bytes is a sample; the rate is measured over the
//! last [`WINDOW`] and the ETA is what is left divided by it (not DRBD's own
//! estimate, which starts from the configured rate, not the achieved one).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples older than this are dropped from the rate.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What a resync looks like now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub out_of_sync_bytes: u64,
    /// Bytes per second over the window; `None` until two samples span 500 ms.
    pub rate_bytes_per_s: Option<f64>,
    /// Milliseconds left at that rate.
    pub eta_ms: Option<u64>,
}

/// The out-of-sync samples of one server's resync.
#[derive(Debug, Clone, Default)]
pub struct Track {
    samples: VecDeque<(Instant, u64)>,
}

impl Track {
    /// A report: `oos` bytes still out of sync; `syncing` while it is a SyncTarget
    /// (anything else ends the track).
    pub fn observe(&mut self, now: Instant, oos: Option<u64>, syncing: bool) {
        let (true, Some(oos)) = (syncing, oos) else {
            self.samples.clear();
            return;
        };
        if self.samples.back().is_some_and(|(_, b)| oos > *b) {
            // More out of sync than before (a restarted resync): start over.
            self.samples.clear();
        }
        self.samples.push_back((now, oos));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The estimate now, if a resync is being tracked.
    pub fn estimate(&self) -> Option<Estimate> {
        let &(t1, last) = self.samples.back()?;
        let &(t0, first) = self.samples.front()?;
        let span = t1.duration_since(t0);
        let rate = (span >= Duration::from_millis(500) && first > last)
            .then(|| (first - last) as f64 / span.as_secs_f64());
        Some(Estimate {
            out_of_sync_bytes: last,
            rate_bytes_per_s: rate,
            eta_ms: rate.map(|r| ((last as f64 / r) * 1000.0).round() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_from_the_window() {
        let t = Instant::now();
        let mut k = Track::default();
        assert!(k.estimate().is_none());
        k.observe(t, Some(10_000_000), true);
        let e = k.estimate().unwrap();
        assert_eq!(e.out_of_sync_bytes, 10_000_000);
        assert_eq!(e.rate_bytes_per_s, None);
        // 4 MB in 2 s: 2 MB/s, 6 MB left: 3 s.
        k.observe(t + Duration::from_secs(2), Some(6_000_000), true);
        let e = k.estimate().unwrap();
        assert_eq!(e.rate_bytes_per_s, Some(2_000_000.0));
        assert_eq!(e.eta_ms, Some(3000));
        // Old samples leave the window: the rate follows the recent one.
        k.observe(t + Duration::from_secs(13), Some(5_000_000), true);
        k.observe(t + Duration::from_secs(14), Some(4_000_000), true);
        let e = k.estimate().unwrap();
        assert_eq!(e.rate_bytes_per_s, Some(1_000_000.0));
        assert_eq!(e.eta_ms, Some(4000));
    }

    #[test]
    fn a_restart_or_the_end_resets() {
        let t = Instant::now();
        let mut k = Track::default();
        k.observe(t, Some(1000), true);
        k.observe(t + Duration::from_secs(1), Some(500), true);
        k.observe(t + Duration::from_secs(2), Some(9000), true);
        assert_eq!(k.estimate().unwrap().rate_bytes_per_s, None);
        k.observe(t + Duration::from_secs(3), Some(0), false);
        assert!(k.estimate().is_none());
        k.observe(t + Duration::from_secs(4), None, true);
        assert!(k.estimate().is_none());
    }
}
