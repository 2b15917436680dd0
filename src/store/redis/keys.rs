//! The Redis key layout, in one place.
//!
//! Every record of one identity carries the identity's id as its hash tag
//! (`{…}`), so all of them live in one Cluster slot and every change to them is
//! a single Lua call. Only two indexes span identities (names and the listing);
//! they are written before or after the records and repaired when read.
//!
//! ```text
//! <prefix>{<identity id>}:identity          JSON Identity, PEXPIREAT its expire_time
//! <prefix>{<identity id>}:key:<key id>      JSON ApiKey, PEXPIREAT its deadline
//! <prefix>{<identity id>}:keys              ZSET of key ids (score 0, ordered by id)
//! <prefix>{<identity id>}:key-names         HASH key name -> key id
//! <prefix>{<identity id>}:totp              JSON TotpRecord (sealed seed)
//! <prefix>{<identity id>}:last-use          HASH key id -> last use (unix ms)
//! <prefix>{<identity id>}:usage             HASH rate limit / credit states (domain::usage)
//! <prefix>identity-names                    HASH identity name -> identity id
//! <prefix>identities                        ZSET of identity ids (score 0)
//! <prefix>dataset:{<name>}                  JSON Dataset
//! <prefix>datasets                          ZSET of dataset names (score 0)
//! <prefix>console-session:<handle>          JSON console session, PEXPIREAT its end
//! <prefix>key-ends                          ZSET "<kind>:<key id>" scored by the key's end (ms)
//! <prefix>expiry:warned:<key id>:<end ms>:<lead s>  marker of a sent KEY_EXPIRING
//!   Under Redis Cluster the deadline index is kept per identity, in its slot:
//! <prefix>{<identity id>}:key-ends          ZSET, as key-ends, of the identity's keys
//! <prefix>{<identity id>}:expiry:warned:<key id>:<end ms>:<lead s>  marker, as above
//! <prefix>key-end-identities                ZSET of identity ids whose index to read (score 0)
//! <prefix>expiry:sweep                      lease of the expiry sweep (PX its interval)
//! <prefix>expiry:indexed                    marker: keys written before the index have entries
//! ```

use crate::domain::{IdentityId, KeyEnd, KeyEndKind, KeyId};
use std::time::Duration;

/// A deadline index member's kind part; the Lua in `scripts.rs` (`key_end`)
/// writes the same two words.
fn key_end_kind_word(kind: KeyEndKind) -> &'static str {
    match kind {
        KeyEndKind::Expired => "expired",
        KeyEndKind::GraceEnded => "grace-ended",
    }
}

/// The deadline index member of `end`: `<kind>:<key id>`.
pub fn key_end_member(end: &KeyEnd) -> String {
    format!("{}:{}", key_end_kind_word(end.kind), end.key_id)
}

/// The kind and key of a deadline index member; `None` for anything else.
pub fn parse_key_end_member(member: &str) -> Option<(KeyEndKind, KeyId)> {
    let (word, id) = member.split_once(':')?;
    let kind = [KeyEndKind::Expired, KeyEndKind::GraceEnded]
        .into_iter()
        .find(|kind| key_end_kind_word(*kind) == word)?;
    Some((kind, KeyId::parse(id).ok()?))
}
use crate::domain::ids::{IDENTITY_ID_LEN, KEY_ID_LEN};

/// A record Verify reads, named by its id alone: what Verify's record cache
/// keys its entries by, inline, where the Redis name would be a string of
/// about 45 bytes on the heap for each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyRecordName {
    /// A key's record.
    Key([u8; KEY_ID_LEN]),
    /// An identity's record.
    Identity([u8; IDENTITY_ID_LEN]),
}

impl VerifyRecordName {
    /// The name of `key`'s record.
    pub fn key(key: &KeyId) -> Self {
        Self::Key(
            key.as_str()
                .as_bytes()
                .try_into()
                .expect("a key id has KEY_ID_LEN characters"),
        )
    }

    /// The name of `identity`'s record.
    pub fn identity(identity: &IdentityId) -> Self {
        Self::Identity(
            identity
                .as_str()
                .as_bytes()
                .try_into()
                .expect("an identity id has IDENTITY_ID_LEN characters"),
        )
    }
}

/// Builds every Redis key keyrack uses, under a configurable prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// Keys under `prefix`, e.g. `keyrack:`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn tagged(&self, identity: &IdentityId) -> String {
        format!("{}{{{}}}:", self.prefix, identity)
    }

    /// The identity's record.
    pub fn identity(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "identity"
    }

    /// What a key record's name starts with; Lua scripts append key ids to it.
    pub fn key_prefix(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "key:"
    }

    /// A key's record.
    pub fn key(&self, key: &KeyId) -> String {
        self.key_prefix(&key.identity_id()) + key.as_str()
    }

    /// What Verify reads in one MGET: the key's record, then its identity's.
    /// Both carry the identity's hash tag (one round trip, one Cluster slot).
    pub fn verify_records(&self, key: &KeyId) -> [String; 2] {
        [self.key(key), self.identity(&key.identity_id())]
    }

    /// Which record Verify reads a Redis name is, if it is one: the inverse
    /// of `verify_records`, for the names Redis sends in invalidations.
    pub fn verify_record_name(&self, name: &[u8]) -> Option<VerifyRecordName> {
        let tagged = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"{")?;
        let (identity, rest) = tagged.split_at_checked(IDENTITY_ID_LEN)?;
        let rest = rest.strip_prefix(b"}:")?;
        let identity = IdentityId::parse(std::str::from_utf8(identity).ok()?).ok()?;
        if rest == b"identity" {
            return Some(VerifyRecordName::identity(&identity));
        }
        let key = KeyId::parse(std::str::from_utf8(rest.strip_prefix(b"key:")?).ok()?).ok()?;
        (key.identity_id() == identity).then(|| VerifyRecordName::key(&key))
    }

    /// The identity's key ids.
    pub fn key_index(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "keys"
    }

    /// The identity's key names.
    pub fn key_names(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "key-names"
    }

    /// The identity's authenticator.
    pub fn totp(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "totp"
    }

    /// When the identity's keys were last used.
    pub fn last_use(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "last-use"
    }

    /// The states of the identity's and its keys' rate limits and credits.
    pub fn usage(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "usage"
    }

    /// Identity names across the authority.
    pub fn identity_names(&self) -> String {
        format!("{}identity-names", self.prefix)
    }

    /// A dataset's record.
    pub fn dataset(&self, name: &str) -> String {
        format!("{}dataset:{{{}}}", self.prefix, name)
    }

    /// A dataset's delete mark: present while a DeleteDataset runs, so no
    /// identity write newly grants the dataset (same slot as its record).
    pub fn dataset_delete_mark(&self, name: &str) -> String {
        self.dataset(name) + ":deleting"
    }

    /// The audit stream: every audited change, newest last.
    pub fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }

    /// Dataset names across the authority.
    pub fn datasets(&self) -> String {
        format!("{}datasets", self.prefix)
    }

    /// Identity ids across the authority.
    pub fn identities(&self) -> String {
        format!("{}identities", self.prefix)
    }

    /// A console session, filed under the digest of its cookie.
    pub fn console_session(&self, handle: &str) -> String {
        format!("{}console-session:{handle}", self.prefix)
    }

    /// The deadline index: every key's end, scored by when.
    pub fn key_ends(&self) -> String {
        format!("{}key-ends", self.prefix)
    }

    /// The marker that the warning `lead` ahead of `end` was sent.
    pub fn expiry_warned(&self, end: &KeyEnd, lead: Duration) -> String {
        format!("{}{}", self.prefix, Self::warned_suffix(end, lead))
    }

    fn warned_suffix(end: &KeyEnd, lead: Duration) -> String {
        format!(
            "expiry:warned:{}:{}:{}",
            end.key_id,
            end.at.0,
            lead.as_secs()
        )
    }

    /// Under Redis Cluster, the deadline index of one identity's keys, in
    /// the identity's slot so that the scripts writing its keys write it too.
    pub fn identity_key_ends(&self, identity: &IdentityId) -> String {
        self.tagged(identity) + "key-ends"
    }

    /// Under Redis Cluster, the warning marker of [`Self::expiry_warned`],
    /// in the slot of the key's identity.
    pub fn identity_expiry_warned(&self, end: &KeyEnd, lead: Duration) -> String {
        self.tagged(&end.key_id.identity_id()) + &Self::warned_suffix(end, lead)
    }

    /// Under Redis Cluster, the identities whose deadline index the expiry
    /// task reads.
    pub fn key_end_identities(&self) -> String {
        format!("{}key-end-identities", self.prefix)
    }

    /// The identity whose hash tag `slot_key` carries, if it is one of the
    /// identity-tagged names above.
    pub fn identity_of_slot_key(&self, slot_key: &str) -> Option<IdentityId> {
        let tagged = slot_key.strip_prefix(&self.prefix)?.strip_prefix('{')?;
        let (identity, rest) = tagged.split_at_checked(IDENTITY_ID_LEN)?;
        rest.starts_with("}:").then_some(())?;
        IdentityId::parse(identity).ok()
    }

    /// The expiry sweep's lease.
    pub fn expiry_sweep(&self) -> String {
        format!("{}expiry:sweep", self.prefix)
    }

    /// The marker that keys written before the deadline index got entries.
    pub fn key_ends_indexed(&self) -> String {
        format!("{}expiry:indexed", self.prefix)
    }

    /// The marker that a token was ever imported (set before the first
    /// import index entry, never removed). It shares its slot with
    /// `imports_checked`, so both are read in one round trip under Cluster.
    pub fn imports_marker(&self) -> String {
        format!("{}{{imports}}", self.prefix)
    }

    /// The marker that a store written before `imports_marker` existed was
    /// walked once for imported keys (and had none then).
    pub fn imports_checked(&self) -> String {
        format!("{}{{imports}}:checked", self.prefix)
    }

    /// The import index entry of one imported token's keyed digest: the id
    /// of its key. Its own slot, so written around the key record.
    pub fn import(&self, digest: &str) -> String {
        format!("{}import:{{{digest}}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_one_identity_share_its_hash_tag() {
        let keyspace = Keyspace::new("keyrack:");
        let identity = IdentityId::parse("abcdefghijkl").unwrap();
        let key = KeyId::parse("abcdefghijklXYZ123").unwrap();
        let tag = "{abcdefghijkl}";
        for name in [
            keyspace.identity(&identity),
            keyspace.key(&key),
            keyspace.key_index(&identity),
            keyspace.key_names(&identity),
            keyspace.totp(&identity),
            keyspace.last_use(&identity),
            keyspace.usage(&identity),
            keyspace.identity_key_ends(&identity),
        ] {
            assert!(name.starts_with("keyrack:") && name.contains(tag), "{name}");
            assert_eq!(keyspace.identity_of_slot_key(&name), Some(identity.clone()));
        }
        assert_eq!(
            keyspace.identity_of_slot_key(&keyspace.dataset("abcdefghijkl")),
            None
        );
        assert_eq!(
            keyspace.identity_of_slot_key("other:{abcdefghijkl}:keys"),
            None
        );
        assert_eq!(
            keyspace.identity_of_slot_key("keyrack:{abcdefghijk}:keys"),
            None
        );
        assert_eq!(
            keyspace.key(&key),
            "keyrack:{abcdefghijkl}:key:abcdefghijklXYZ123"
        );
    }

    #[test]
    fn deadline_index_members_read_back() {
        let key_id = KeyId::parse("abcdefghijklXYZ123").unwrap();
        for kind in [KeyEndKind::Expired, KeyEndKind::GraceEnded] {
            let end = KeyEnd {
                key_id: key_id.clone(),
                kind,
                at: crate::domain::UnixMillis(5),
            };
            let member = key_end_member(&end);
            assert_eq!(parse_key_end_member(&member), Some((kind, key_id.clone())));
        }
        assert_eq!(
            key_end_member(&KeyEnd {
                key_id: key_id.clone(),
                kind: KeyEndKind::GraceEnded,
                at: crate::domain::UnixMillis(5),
            }),
            "grace-ended:abcdefghijklXYZ123"
        );
        assert_eq!(parse_key_end_member("lapsed:abcdefghijklXYZ123"), None);
        assert_eq!(parse_key_end_member("expired:short"), None);
    }

    #[test]
    fn verify_record_names_parse_back_from_redis_names() {
        let keyspace = Keyspace::new("keyrack:");
        let key = KeyId::parse("abcdefghijklXYZ123").unwrap();
        let [key_name, identity_name] = keyspace.verify_records(&key);
        assert_eq!(
            keyspace.verify_record_name(key_name.as_bytes()),
            Some(VerifyRecordName::key(&key))
        );
        assert_eq!(
            keyspace.verify_record_name(identity_name.as_bytes()),
            Some(VerifyRecordName::identity(&key.identity_id()))
        );
        for other in [
            keyspace.key_index(&key.identity_id()),
            keyspace.usage(&key.identity_id()),
            "other:{abcdefghijkl}:identity".to_owned(),
            "keyrack:{abcdefghijkl}:key:mnopqrstuvwxXYZ123".to_owned(),
            "keyrack:{abcdefghijkl}:key:abcdefghijklXYZ1234".to_owned(),
        ] {
            assert_eq!(
                keyspace.verify_record_name(other.as_bytes()),
                None,
                "{other}"
            );
        }
    }
}
