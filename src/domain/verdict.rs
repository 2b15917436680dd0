//! Verify's decision on a token.

use super::usage::Settlement;
use super::{ApiKey, Identity, UnixMillis};

/// Why a token was accepted or refused. Reasons after `Unknown` are given only
/// once the secret matched, so they never help guess a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCode {
    /// Valid.
    Valid,
    /// Not of keyrack's format, or a bad checksum.
    Malformed,
    /// No such key, wrong secret, expired or revoked: one answer for all.
    Unknown,
    /// The key or its identity is disabled.
    Disabled,
    /// The caller's address is outside the allow-list, or unknown.
    IpNotAllowed,
    /// The key has no access to the requested dataset.
    DatasetNotAllowed,
    /// The key does not hold every required scope.
    ScopeNotAllowed,
    /// A rate limit of the key or its identity refused the call.
    RateLimited,
    /// The key's credits are spent.
    UsageExceeded,
}

impl VerifyCode {
    /// The code's name as the spec writes it (`VALID`, `UNKNOWN`, ...), for
    /// metrics and traces.
    pub fn name(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::Malformed => "MALFORMED",
            VerifyCode::Unknown => "UNKNOWN",
            VerifyCode::Disabled => "DISABLED",
            VerifyCode::IpNotAllowed => "IP_NOT_ALLOWED",
            VerifyCode::DatasetNotAllowed => "DATASET_NOT_ALLOWED",
            VerifyCode::ScopeNotAllowed => "SCOPE_NOT_ALLOWED",
            VerifyCode::RateLimited => "RATE_LIMITED",
            VerifyCode::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

/// A key and its identity, as Verify reads them and as its verdict names
/// them. Boxed: the pair is about 700 bytes, and a Verify answer moves it
/// through each of the futures between the store and the gRPC layer, where
/// a box moves as a pointer (BENCHMARKS.md, "Verify's future").
pub type Subject = Box<(ApiKey, Identity)>;

/// The outcome of Verify: the code and, once the secret matched, the owner.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The decision.
    pub code: VerifyCode,
    /// The key and its identity, present once the secret matched.
    pub subject: Option<Subject>,
    /// What the key's limits and credits say after this call, for a key
    /// that has any (and only once everything else admitted the call).
    pub usage: Option<Settlement>,
}

impl Verdict {
    /// A refusal that says nothing about the key.
    pub fn refused(code: VerifyCode) -> Self {
        Self {
            code,
            subject: None,
            usage: None,
        }
    }

    /// Whether the token is valid.
    pub fn is_valid(&self) -> bool {
        self.code == VerifyCode::Valid
    }

    /// When the token stops working: the earliest of the key's expiry, its
    /// grace deadline and its identity's expiry.
    pub fn expire_time(&self) -> Option<UnixMillis> {
        self.subject
            .as_deref()
            .and_then(|(key, identity)| key.record_deadline(identity.expire_time))
    }
}
