//! `Debug` for the generated messages that carry a secret (build.rs tells
//! prost not to derive it): every field but the secret is shown.

use crate::proto;
use std::fmt;

const REDACTED: &str = "[redacted]";

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { REDACTED }
}

impl fmt::Debug for proto::VerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("token", &redacted(&self.token))
            .field("dataset", &self.dataset)
            .field("client_ip", &self.client_ip)
            .field("required_scopes", &self.required_scopes)
            .finish()
    }
}

impl fmt::Debug for proto::CreateIdentityResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateIdentityResponse")
            .field("identity", &self.identity)
            .field("key", &self.key)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl fmt::Debug for proto::CreateKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateKeyResponse")
            .field("key", &self.key)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl fmt::Debug for proto::RollKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollKeyRequest")
            .field("key_id", &self.key_id)
            .field(
                "grace_period",
                &match &self.old_key_end {
                    Some(proto::roll_key_request::OldKeyEnd::GracePeriod(d)) => Some(d),
                    _ => None,
                },
            )
            .field(
                "old_key_expire_time",
                &match &self.old_key_end {
                    Some(proto::roll_key_request::OldKeyEnd::OldKeyExpireTime(t)) => Some(t),
                    _ => None,
                },
            )
            .field("totp_code", &redacted(&self.totp_code))
            .field("new_key_expire_time", &self.new_key_expire_time)
            .finish()
    }
}

impl fmt::Debug for proto::BatchRevokeKeysRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRevokeKeysRequest")
            .field("filter", &self.filter)
            .field("validate_only", &self.validate_only)
            .field("totp_code", &redacted(&self.totp_code))
            .finish()
    }
}

impl fmt::Debug for proto::ImportedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportedKey")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("expire_time", &self.expire_time)
            .field("token", &redacted(&self.token))
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl fmt::Debug for proto::RollKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollKeyResponse")
            .field("key", &self.key)
            .field("token", &redacted(&self.token))
            .field("previous_key", &self.previous_key)
            .finish()
    }
}

impl fmt::Debug for proto::CreateDatasetResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateDatasetResponse")
            .field("dataset", &self.dataset)
            .field("identity", &self.identity)
            .field("key", &self.key)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl fmt::Debug for proto::EnrollTotpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollTotpResponse")
            .field("secret", &redacted(&self.secret))
            .field("otpauth_url", &redacted(&self.otpauth_url))
            .finish()
    }
}

impl fmt::Debug for proto::ConfirmTotpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmTotpRequest")
            .field("code", &redacted(&self.code))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let request = proto::VerifyRequest {
            token: "kr_supersecret".into(),
            ..Default::default()
        };
        let response = proto::CreateKeyResponse {
            key: None,
            token: "kr_supersecret".into(),
        };
        let enroll = proto::EnrollTotpResponse {
            secret: "JBSWY3DP".into(),
            otpauth_url: "otpauth://totp/x?secret=JBSWY3DP".into(),
        };
        let imported = proto::ImportKeysRequest {
            identity_id: "abc".into(),
            keys: vec![proto::ImportedKey {
                token: "legacy-supersecret-token".into(),
                ..Default::default()
            }],
        };
        for printed in [
            format!("{imported:?}"),
            format!("{request:?}"),
            format!("{response:?}"),
            format!("{enroll:?}"),
        ] {
            assert!(
                !printed.contains("supersecret") && !printed.contains("JBSWY3DP"),
                "{printed}"
            );
            assert!(printed.contains(REDACTED));
        }
    }
}
