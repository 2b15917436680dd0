//! `last_use_time` without a write per Verify: uses are noted in memory and
//! flushed to the store in batches by a background task, so each key costs at
//! most one write per flush interval.

use crate::domain::ids::KEY_ID_LEN;
use crate::domain::{KeyId, UnixMillis};
use std::collections::HashMap;
use std::sync::Mutex;

/// Uses noted since the last flush. Bounded: past `capacity` distinct keys,
/// further keys wait for the next flush (the time is approximate by design).
#[derive(Debug)]
pub struct LastUseTracker {
    // Key ids inline (18 bytes) rather than as strings: at 100k keys a minute
    // the difference is megabytes.
    pending: Mutex<HashMap<[u8; KEY_ID_LEN], UnixMillis>>,
    capacity: usize,
}

impl LastUseTracker {
    /// A tracker holding at most `capacity` keys between flushes.
    pub fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Notes a use of `key` at `when`.
    pub fn note(&self, key: &KeyId, when: UnixMillis) {
        let Ok(compact) = <[u8; KEY_ID_LEN]>::try_from(key.as_str().as_bytes()) else {
            return;
        };
        // A poisoned lock only loses approximate timestamps; never fail Verify for it.
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if let Some(last) = pending.get_mut(&compact) {
            *last = (*last).max(when);
        } else if pending.len() < self.capacity {
            pending.insert(compact, when);
        }
    }

    /// Takes everything noted so far.
    pub fn take(&self) -> Vec<(KeyId, UnixMillis)> {
        let drained: Vec<([u8; KEY_ID_LEN], UnixMillis)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => Vec::new(),
        };
        drained
            .into_iter()
            .filter_map(|(compact, when)| {
                let text = std::str::from_utf8(&compact).ok()?;
                Some((KeyId::parse(text).ok()?, when))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdentityId;

    #[test]
    fn keeps_the_latest_use_and_stays_bounded() {
        let tracker = LastUseTracker::new(2);
        let identity = IdentityId::generate();
        let (a, b, c) = (
            KeyId::generate(&identity),
            KeyId::generate(&identity),
            KeyId::generate(&identity),
        );
        tracker.note(&a, UnixMillis(5));
        tracker.note(&a, UnixMillis(3));
        tracker.note(&b, UnixMillis(4));
        tracker.note(&c, UnixMillis(6));
        let mut taken = tracker.take();
        taken.sort();
        assert_eq!(
            taken,
            vec![(a, UnixMillis(5)), (b, UnixMillis(4))]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(tracker.take().is_empty());
    }
}
