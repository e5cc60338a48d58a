//! Which pairs the leader's loop examines on a pass.
//!
//! At 10 000 pairs the loop cannot afford to look at every pair every 50 ms,
//! nor to look each one up by its id to find out that it need not (profile in
//! ARCHITECTURE.md, Scale). A [`Sweep`] keeps one slot per pair, in the order
//! of the replicated map, holding the record last examined and, if the pair
//! was calm then (`detector::calm_for`), until when. A pass walks the map and
//! the slots side by side:
//!
//! - a record that is not the one last examined (any change commits a new
//!   record: copy-on-write, `ClusterState::pairs`) is examined;
//! - so is a pair that is not calm, or whose calm is over, unless only the
//!   silence of its agents moved since (nothing was heard of them but
//!   heartbeats: anything else marks the pair changed,
//!   `Liveness::take_changed`). Then the silence alone is read again and the
//!   calm renewed (`detector::calm_margin`);
//! - every pair is examined in full once every [`FULL_LOOK_PASSES`] passes
//!   anyway, a slice of them on each pass, and all of them on a pass asked to
//!   (a new cloud-signal poll).
//!
//! A wake-up by the agents (not a tick) examines only the pairs it names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::liveness::{IdMap, Ids};
use crate::state::{PairRecord, Pairs};

/// Each pair is examined in full at least once every this many passes of the
/// tick (5 s at 50 ms), calm or not.
pub const FULL_LOOK_PASSES: u64 = 100;

struct Slot {
    /// The record last examined: kept alive, so that a new record can never
    /// sit at its address and pass for it.
    rec: Arc<PairRecord>,
    calm_until: Option<Instant>,
}

/// The slots of the pairs, in the order of the replicated map, and where each
/// pair's slot is.
#[derive(Default)]
pub struct Sweep {
    slots: Vec<Slot>,
    index: IdMap<usize>,
    passes: u64,
}

/// A pair to examine, and its slot (`None`: a pair new since the last tick).
pub struct Due<'a> {
    pub pair: &'a Arc<PairRecord>,
    pub slot: Option<usize>,
}

impl Sweep {
    /// The pairs to examine on this pass.
    ///
    /// - `tick`: a tick, else a wake-up by the agents (only `changed`).
    /// - `all`: examine every pair.
    /// - `renew`: the calm of a pair whose calm is over and whose record and
    ///   agents' view did not change, from its agents' silence now; `None`
    ///   examines it.
    pub fn due<'a>(
        &mut self,
        pairs: &'a Pairs,
        changed: &Ids,
        tick: bool,
        all: bool,
        now: Instant,
        mut renew: impl FnMut(&PairRecord) -> Option<Duration>,
    ) -> Vec<Due<'a>> {
        if !tick {
            return changed
                .iter()
                .filter_map(|id| pairs.get_key_value(id))
                .map(|(id, pair)| Due {
                    pair,
                    slot: self.slot_of(id),
                })
                .collect();
        }
        self.passes += 1;
        if pairs.len() != self.slots.len() {
            return self.realign(pairs);
        }
        for id in changed {
            if let Some(i) = self.slot_of(id) {
                self.slots[i].calm_until = None;
            }
        }
        let look = self.passes % FULL_LOOK_PASSES;
        let mut out = Vec::new();
        for (i, (pair, slot)) in pairs.values().zip(self.slots.iter_mut()).enumerate() {
            let same = Arc::ptr_eq(&slot.rec, pair);
            // Out of step with the map (a pair removed and another added in
            // the same breath): start again from the map as it is.
            if !same && slot.rec.spec.id != pair.spec.id {
                return self.realign(pairs);
            }
            let examine = all
                || !same
                || i as u64 % FULL_LOOK_PASSES == look
                || match slot.calm_until {
                    None => true,
                    Some(t) if now < t => false,
                    Some(_) => match renew(pair) {
                        Some(d) => {
                            slot.calm_until = Some(now + d);
                            false
                        }
                        None => true,
                    },
                };
            if examine {
                if !same {
                    slot.rec = pair.clone();
                }
                out.push(Due {
                    pair,
                    slot: Some(i),
                });
            }
        }
        out
    }

    /// Note what the examination of the pair in `slot` found: calm until
    /// then, or (`None`) to be examined again on the next tick.
    pub fn set_calm(&mut self, slot: Option<usize>, until: Option<Instant>) {
        if let Some(s) = slot.and_then(|i| self.slots.get_mut(i)) {
            s.calm_until = until;
        }
    }

    /// The slot of pair `id`, if the slots hold it where the index says.
    fn slot_of(&self, id: &str) -> Option<usize> {
        let i = *self.index.get(id)?;
        (self.slots.get(i)?.rec.spec.id == id).then_some(i)
    }

    /// New slots for the pairs as they are, none of them calm: every pair
    /// is due. (The slots are in step with the map as long as a record that
    /// is not the one examined has the same id: a changed record keeps its
    /// place.)
    fn realign<'a>(&mut self, pairs: &'a Pairs) -> Vec<Due<'a>> {
        self.slots = pairs
            .values()
            .map(|p| Slot {
                rec: p.clone(),
                calm_until: None,
            })
            .collect();
        self.index = pairs
            .keys()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        pairs
            .values()
            .enumerate()
            .map(|(i, pair)| Due {
                pair,
                slot: Some(i),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PairState;
    use crate::testutil::pair;

    fn map(ids: &[&str]) -> Pairs {
        ids.iter()
            .map(|id| {
                let mut p = pair(PairState::Healthy);
                p.spec.id = id.to_string();
                (id.to_string(), Arc::new(p))
            })
            .collect()
    }

    fn ids(due: &[Due]) -> Vec<String> {
        due.iter().map(|d| d.pair.spec.id.clone()).collect()
    }

    fn calm_all(s: &mut Sweep, due: &[Due], until: Instant) {
        for d in due {
            s.set_calm(d.slot, Some(until));
        }
    }

    #[test]
    fn calm_pairs_are_skipped_until_their_time_then_renewed_or_examined() {
        let pairs = map(&["a", "b", "c"]);
        let none = Ids::default();
        let t0 = Instant::now();
        let mut s = Sweep::default();
        let first = s.due(&pairs, &none, true, false, t0, |_| None);
        assert_eq!(ids(&first), ["a", "b", "c"], "new pairs are all examined");
        calm_all(&mut s, &first, t0 + Duration::from_secs(1));
        // Within the calm: nothing (but the pass's slice of full looks).
        let mut looked = 0;
        for n in 0..FULL_LOOK_PASSES {
            let due = s.due(&pairs, &none, true, false, t0, |_| {
                panic!("nothing's calm is over")
            });
            looked += due.len();
            assert!(due.len() <= 1, "pass {n}: {:?}", ids(&due));
            calm_all(&mut s, &due, t0 + Duration::from_secs(1));
        }
        assert_eq!(looked, 3, "each pair examined in full once in 100 passes");
        // The calm is over: renewed from the silence, or examined.
        let later = t0 + Duration::from_secs(2);
        let mut asked = Vec::new();
        let due = s.due(&pairs, &none, true, false, later, |p| {
            asked.push(p.spec.id.clone());
            (p.spec.id != "b").then_some(Duration::from_secs(1))
        });
        // a renewed, b not (examined), c examined in full (this pass's slice).
        assert_eq!(asked, ["a", "b"]);
        assert_eq!(ids(&due), ["b", "c"]);
        calm_all(&mut s, &due, later + Duration::from_secs(1));
        // Renewed (or examined and calm again): nothing asked within the calm.
        let due = s.due(&pairs, &none, true, false, later, |p| {
            panic!("{} is calm until later", p.spec.id)
        });
        assert!(due.is_empty(), "{:?}", ids(&due));
    }

    #[test]
    fn a_changed_record_a_changed_view_or_a_full_pass_is_examined() {
        let mut pairs = map(&["a", "b", "c"]);
        let none = Ids::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        let mut s = Sweep::default();
        let d = s.due(&pairs, &none, true, false, t0, |_| None);
        calm_all(&mut s, &d, until);
        // Skip past this pass's slice of full looks: count only what changed.
        let skip = |s: &mut Sweep, pairs: &Pairs, ch: &Ids| {
            let d = s.due(pairs, ch, true, false, t0, |_| None);
            let got: Vec<String> = ids(&d);
            calm_all(s, &d, until);
            got
        };
        // A new record for b (what any committed change makes).
        let mut b = (*pairs["b"]).clone();
        b.epoch += 1;
        pairs.insert("b".into(), Arc::new(b));
        let got = skip(&mut s, &pairs, &none);
        assert!(got.contains(&"b".to_string()), "{got:?}");
        assert!(got.len() <= 2, "{got:?}");
        // The agents' view of c changed.
        let ch: Ids = ["c".to_string()].into_iter().collect();
        let got = skip(&mut s, &pairs, &ch);
        assert!(got.contains(&"c".to_string()), "{got:?}");
        // A full pass.
        let d = s.due(&pairs, &none, true, true, t0, |_| None);
        assert_eq!(ids(&d), ["a", "b", "c"]);
        // A wake-up by the agents: only what they name, known or not.
        let ch: Ids = ["a".to_string(), "zz".to_string()].into_iter().collect();
        let d = s.due(&pairs, &ch, false, false, t0, |_| None);
        assert_eq!(ids(&d), ["a"]);
        assert_eq!(d[0].slot, Some(0));
    }

    #[test]
    fn a_pair_added_or_removed_realigns_the_slots_and_nothing_is_skipped_wrongly() {
        let none = Ids::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        let mut s = Sweep::default();
        let pairs = map(&["a", "c"]);
        let d = s.due(&pairs, &none, true, false, t0, |_| None);
        calm_all(&mut s, &d, until);
        // "b" lands between them: the same count after "c" goes too.
        let mut pairs2 = map(&["a", "b"]);
        pairs2.insert("a".into(), pairs["a"].clone());
        let d = s.due(&pairs2, &none, true, false, t0, |_| None);
        assert_eq!(ids(&d), ["a", "b"], "realigned: all examined once");
        assert_eq!(d[1].slot, Some(1));
        calm_all(&mut s, &d, until);
        // In step again: a wake-up on "b" finds its slot.
        let ch: Ids = ["b".to_string()].into_iter().collect();
        let d = s.due(&pairs2, &ch, false, false, t0, |_| None);
        assert_eq!(d[0].slot, Some(1));
        // A slot set on a pair since removed is ignored.
        s.set_calm(Some(7), Some(until));
    }
}
