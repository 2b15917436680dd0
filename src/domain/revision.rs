//! Optimistic concurrency: every identity and key record carries a
//! revision, every write of one names the revision it read, and the store
//! refuses a write whose record moved on since, rather than overwrite a
//! change it never saw. The written record is at the next revision.
//!
//! This is the rule's one home. The memory store calls it under its lock;
//! the Redis scripts (`store/redis/scripts.rs`: UPDATE_IDENTITY, UPDATE_KEY,
//! ROLL_KEY, DELETE_IDENTITY, CHARGE_USAGE) mirror the check, comparing the
//! stored `revision` with the one named, and store the record the Redis
//! store bumped with [`next`].

/// A write named a revision its record has moved past (or broke another rule
/// of the record's, such as a key's grace fields): read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionConflict;

/// The revision a record is written at by a write that read it at `read`.
pub fn next(read: u64) -> u64 {
    read.saturating_add(1)
}

/// Whether a write that read revision `read` may change a record stored at
/// `stored`.
pub fn admits(stored: u64, read: u64) -> bool {
    stored == read
}

/// The revision a write that read `read` stores, if the record is still at
/// `read`.
pub fn check_and_bump(stored: u64, read: u64) -> Result<u64, RevisionConflict> {
    if admits(stored, read) {
        Ok(next(read))
    } else {
        Err(RevisionConflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_lands_only_on_the_revision_it_read() {
        assert_eq!(check_and_bump(4, 4), Ok(5));
        assert_eq!(check_and_bump(5, 4), Err(RevisionConflict));
        assert_eq!(check_and_bump(3, 4), Err(RevisionConflict));
    }
}
