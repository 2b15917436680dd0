//! Proto ↔ domain: every request field is checked here, all at once, so a
//! caller sees every problem in one INVALID_ARGUMENT with field violations.

use crate::domain::SecretString;
use crate::domain::cidr;
use crate::domain::key::Origin;
use crate::domain::labels::{self, Labels};
use crate::domain::names::{DatasetName, IdentityName, parse_description, parse_name};
use crate::domain::scope;
use crate::domain::usage::{self, Credits, RateLimit, Refill, Settlement};
use crate::domain::{
    ApiKey, Error, Identity, IdentityId, IdentityKind, KeyId, State, UnixMillis, Violations,
};
use crate::proto;
use crate::service::{
    IdentityChanges, KeyChanges, NewIdentity, NewKey, OldKeyEnd, PageRequest, RollRequest,
};
use ipnet::IpNet;

/// Latest instant a timestamp may name: the end of year 9999, as
/// google.protobuf.Timestamp defines.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A request's timestamp as milliseconds, refusing values outside
/// google.protobuf.Timestamp's range.
pub fn timestamp_in(time: &prost_types::Timestamp) -> Result<UnixMillis, String> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err("nanos must be between 0 and 999,999,999".into());
    }
    if !(0..=MAX_TIMESTAMP_SECONDS).contains(&time.seconds) {
        return Err("must be between 1970-01-01 and 9999-12-31".into());
    }
    Ok(UnixMillis(
        time.seconds * 1000 + i64::from(time.nanos / 1_000_000),
    ))
}

/// Milliseconds as a google.protobuf.Timestamp.
pub fn timestamp_out(time: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.0.div_euclid(1000),
        nanos: (time.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn state_out(state: State) -> proto::State {
    match state {
        State::Active => proto::State::Active,
        State::Disabled => proto::State::Disabled,
    }
}

/// A domain identity kind as the proto enum.
pub fn kind_out(kind: IdentityKind) -> proto::IdentityKind {
    match kind {
        IdentityKind::Service => proto::IdentityKind::Service,
        IdentityKind::Person => proto::IdentityKind::Person,
    }
}

/// An identity as the API shows it.
pub fn identity_out(identity: Identity) -> proto::Identity {
    proto::Identity {
        id: identity.id.to_string(),
        name: identity.name.into(),
        description: identity.description,
        kind: kind_out(identity.kind).into(),
        state: state_out(identity.state).into(),
        datasets: identity.datasets,
        allowed_cidrs: identity
            .allowed_cidrs
            .iter()
            .map(IpNet::to_string)
            .collect(),
        admin: identity.admin,
        expire_time: identity.expire_time.map(timestamp_out),
        create_time: Some(timestamp_out(identity.create_time)),
        update_time: Some(timestamp_out(identity.update_time)),
        external_id: identity.external_id.unwrap_or_default(),
        scopes: identity.scopes,
        labels: identity.labels.into_iter().collect(),
        rate_limits: rate_limits_out(&identity.rate_limits),
        key_count: identity.key_count as i64,
    }
}

/// A key as the API shows it: never its hash.
pub fn key_out(key: ApiKey) -> proto::ApiKey {
    proto::ApiKey {
        in_grace: key.in_grace(),
        id: key.id.to_string(),
        identity_id: key.identity_id.to_string(),
        name: key.name,
        description: key.description,
        state: state_out(key.state).into(),
        create_time: Some(timestamp_out(key.create_time)),
        expire_time: key.expire_time.map(timestamp_out),
        last_use_time: key.last_use_time.map(timestamp_out),
        rolled_from: key.rolled_from.map(|id| id.to_string()).unwrap_or_default(),
        rolled_to: key.rolled_to.map(|id| id.to_string()).unwrap_or_default(),
        grace_expire_time: key.grace_expire_time.map(timestamp_out),
        token_hint: key.token_hint,
        allowed_cidrs: key.allowed_cidrs.iter().map(IpNet::to_string).collect(),
        scopes: key.scopes,
        datasets: key.datasets,
        labels: key.labels.into_iter().collect(),
        origin: origin_out(key.origin).into(),
        honeytoken: key.honeytoken,
        rate_limits: rate_limits_out(&key.rate_limits),
        credits: key.credits.as_ref().map(credits_out),
    }
}

fn duration_out(millis: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (millis / 1_000) as i64,
        nanos: (millis % 1_000) as i32 * 1_000_000,
    }
}

fn rate_limits_out(limits: &[RateLimit]) -> Vec<proto::RateLimit> {
    limits
        .iter()
        .map(|limit| proto::RateLimit {
            name: limit.name.clone(),
            limit: limit.limit as i64,
            duration: Some(duration_out(limit.duration_ms)),
        })
        .collect()
}

fn credits_out(credits: &Credits) -> proto::Credits {
    proto::Credits {
        remaining: credits.remaining as i64,
        refill: credits.refill.map(|refill| proto::CreditRefill {
            amount: refill.amount as i64,
            interval: Some(duration_out(refill.interval_ms)),
        }),
    }
}

/// What Verify's answer says of the key's usage controls: the limits, the
/// credits left and when to retry.
pub fn usage_out(
    usage: &Settlement,
) -> (
    Vec<proto::RateLimitState>,
    Option<i64>,
    Option<prost_types::Duration>,
) {
    let limits = usage
        .limits
        .iter()
        .map(|limit| proto::RateLimitState {
            name: limit.name.clone(),
            limit: limit.limit as i64,
            remaining: limit.remaining as i64,
            reset_time: Some(timestamp_out(limit.reset_time)),
            shared: limit.shared,
        })
        .collect();
    let retry_after = usage.refusal.and(usage.retry_after_ms).map(duration_out);
    (
        limits,
        usage.credits_remaining.map(|left| left as i64),
        retry_after,
    )
}

/// A request's duration in whole milliseconds, refusing negative or
/// malformed ones and sub-millisecond parts.
fn millis_in(duration: &prost_types::Duration) -> Result<u64, String> {
    let value = duration_in(duration, std::time::Duration::MAX)?;
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be a whole number of milliseconds".into());
    }
    u64::try_from(value.as_millis()).map_err(|_| "is too long".to_owned())
}

/// Checks a list of rate limits, reporting each bad entry.
pub fn check_rate_limits(
    violations: &mut Violations,
    field: &str,
    entries: &[proto::RateLimit],
) -> Vec<RateLimit> {
    let mut limits = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let at = format!("{field}[{index}]");
        let name = violations.check(&format!("{at}.name"), usage::parse_limit_name(&entry.name));
        let limit = violations.check(&format!("{at}.limit"), usage::check_limit(entry.limit));
        let duration_ms = match &entry.duration {
            Some(duration) => violations.check(
                &format!("{at}.duration"),
                millis_in(duration).and_then(usage::check_duration),
            ),
            None => {
                violations.add(format!("{at}.duration"), "is required");
                None
            }
        };
        if let (Some(name), Some(limit), Some(duration_ms)) = (name, limit, duration_ms) {
            limits.push(RateLimit {
                name,
                limit,
                duration_ms,
            });
        }
    }
    let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
    for (field, why) in usage::check_rate_limits(field, &names) {
        violations.add(field, why);
    }
    limits
}

/// Checks a Verify's cost.
pub fn cost_in(cost: i64) -> Result<u64, String> {
    u64::try_from(cost)
        .ok()
        .filter(|cost| *cost <= usage::MAX_COST)
        .ok_or_else(|| format!("must be between 0 and {}", usage::MAX_COST))
}

/// Checks credits, granting their balance now.
pub fn check_credits(
    violations: &mut Violations,
    field: &str,
    entry: Option<&proto::Credits>,
) -> Option<Credits> {
    let entry = entry?;
    let remaining =
        check_credit_balance(violations, &format!("{field}.remaining"), entry.remaining);
    let refill = match &entry.refill {
        None => Some(None),
        Some(refill) => {
            let at = format!("{field}.refill");
            let amount = violations.check(
                &format!("{at}.amount"),
                usage::check_refill_amount(refill.amount),
            );
            let interval_ms = match &refill.interval {
                Some(interval) => violations.check(
                    &format!("{at}.interval"),
                    millis_in(interval).and_then(usage::check_refill_interval),
                ),
                None => {
                    violations.add(format!("{at}.interval"), "is required");
                    None
                }
            };
            amount.zip(interval_ms).map(|(amount, interval_ms)| {
                Some(Refill {
                    amount,
                    interval_ms,
                })
            })
        }
    };
    Some(Credits {
        remaining: remaining?,
        granted_at: UnixMillis::now(),
        refill: refill?,
    })
}

/// Checks a credit balance.
fn check_credit_balance(violations: &mut Violations, field: &str, remaining: i64) -> Option<u64> {
    violations.check(field, usage::check_balance(remaining))
}

fn origin_out(origin: Option<Origin>) -> proto::Origin {
    match origin {
        None => proto::Origin::Unspecified,
        Some(Origin::CreateIdentity) => proto::Origin::CreateIdentity,
        Some(Origin::CreateKey) => proto::Origin::CreateKey,
        Some(Origin::Dataset) => proto::Origin::Dataset,
        Some(Origin::Roll) => proto::Origin::Roll,
        Some(Origin::Import) => proto::Origin::Import,
    }
}

/// Checks a label map, reporting each bad entry.
pub fn check_labels(
    violations: &mut Violations,
    field: &str,
    entries: &std::collections::HashMap<String, String>,
) -> Labels {
    match labels::parse_labels(field, entries.iter()) {
        Ok(labels) => labels,
        Err(errors) => {
            for (field, why) in errors {
                violations.add(field, why);
            }
            Labels::new()
        }
    }
}

/// Most datasets on one identity.
pub const MAX_DATASETS: usize = 256;

fn check_cidrs(violations: &mut Violations, field: &str, entries: &[String]) -> Vec<IpNet> {
    match cidr::parse_cidrs(field, entries) {
        Ok(nets) => nets,
        Err(errors) => {
            for (field, why) in errors {
                violations.add(field, why);
            }
            Vec::new()
        }
    }
}

/// Checks a list of scopes, reporting each bad entry.
pub fn check_scopes(violations: &mut Violations, field: &str, entries: &[String]) -> Vec<String> {
    match scope::parse_scopes(field, entries) {
        Ok(scopes) => scopes,
        Err(errors) => {
            for (field, why) in errors {
                violations.add(field, why);
            }
            Vec::new()
        }
    }
}

fn check_datasets(violations: &mut Violations, field: &str, entries: &[String]) -> Vec<String> {
    if entries.len() > MAX_DATASETS {
        violations.add(field, format!("at most {MAX_DATASETS} datasets"));
        return Vec::new();
    }
    let mut names: Vec<String> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match parse_name(entry) {
            Ok(name) if names.contains(&name) => violations.add(
                format!("{field}[{index}]"),
                format!("{name:?} is listed twice"),
            ),
            Ok(name) => names.push(name),
            Err(why) => violations.add(format!("{field}[{index}]"), why.to_string()),
        }
    }
    names
}

fn check_expire(
    violations: &mut Violations,
    field: &str,
    time: Option<&prost_types::Timestamp>,
) -> Option<UnixMillis> {
    time.and_then(|time| violations.check(field, timestamp_in(time)))
}

/// Checks an id field.
pub fn identity_id_in(field: &str, text: &str) -> Result<IdentityId, Error> {
    IdentityId::parse(text).map_err(|e| Error::invalid(field, e.to_string()))
}

/// Checks a key id field.
pub fn key_id_in(field: &str, text: &str) -> Result<KeyId, Error> {
    KeyId::parse(text).map_err(|e| Error::invalid(field, e.to_string()))
}

/// Checks page_size and page_token.
pub fn page_in(page_size: i32, page_token: String) -> Result<PageRequest, Error> {
    let page_size = usize::try_from(page_size)
        .map_err(|_| Error::invalid("page_size", "must not be negative"))?;
    if page_token.len() > 256 {
        return Err(Error::invalid(
            "page_token",
            "is not a token this API returned",
        ));
    }
    Ok(PageRequest {
        page_size,
        page_token,
    })
}

/// The answer to a request a required field of which did not check out:
/// every violation recorded, that field's among them. (`Violations::check`
/// leaves a value out only after recording why, so the second arm is never
/// taken; were it, the request would still be refused, not trusted.)
fn refusal(violations: Violations) -> Error {
    match violations.finish() {
        Err(error) => error,
        Ok(()) => Error::invalid("request", "a required field is missing"),
    }
}

/// Checks a CreateIdentityRequest.
pub fn new_identity_in(request: proto::CreateIdentityRequest) -> Result<NewIdentity, Error> {
    let mut violations = Violations::new();
    let name = violations.check("name", IdentityName::parse_service(&request.name));
    let description = violations.check("description", parse_description(&request.description));
    let datasets = check_datasets(&mut violations, "datasets", &request.datasets);
    let allowed_cidrs = check_cidrs(&mut violations, "allowed_cidrs", &request.allowed_cidrs);
    let scopes = check_scopes(&mut violations, "scopes", &request.scopes);
    let labels = check_labels(&mut violations, "labels", &request.labels);
    let rate_limits = check_rate_limits(&mut violations, "rate_limits", &request.rate_limits);
    let expire_time = check_expire(&mut violations, "expire_time", request.expire_time.as_ref());
    violations.finish()?;
    let Some(name) = name else {
        return Err(Error::invalid("name", "is required"));
    };
    Ok(NewIdentity {
        labels,
        rate_limits,
        name,
        description: description.unwrap_or_default(),
        datasets,
        allowed_cidrs,
        scopes,
        admin: request.admin,
        expire_time,
    })
}

/// Checks a CreateKeyRequest.
pub fn new_key_in(request: proto::CreateKeyRequest) -> Result<NewKey, Error> {
    let mut violations = Violations::new();
    let identity_id = violations.check("identity_id", IdentityId::parse(&request.identity_id));
    let name = violations.check("name", parse_name(&request.name));
    let description = violations.check("description", parse_description(&request.description));
    let allowed_cidrs = check_cidrs(&mut violations, "allowed_cidrs", &request.allowed_cidrs);
    let scopes = check_scopes(&mut violations, "scopes", &request.scopes);
    let datasets = check_datasets(&mut violations, "datasets", &request.datasets);
    let labels = check_labels(&mut violations, "labels", &request.labels);
    let rate_limits = check_rate_limits(&mut violations, "rate_limits", &request.rate_limits);
    let credits = check_credits(&mut violations, "credits", request.credits.as_ref());
    let expire_time = check_expire(&mut violations, "expire_time", request.expire_time.as_ref());
    let Some(identity_id) = identity_id else {
        return Err(refusal(violations));
    };
    violations.finish()?;
    Ok(NewKey {
        labels,
        rate_limits,
        credits,
        scopes,
        datasets,
        identity_id,
        name: name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        expire_time,
        allowed_cidrs,
        honeytoken: request.honeytoken,
    })
}

/// The mask's paths, accepting proto names and their JSON (lowerCamelCase)
/// spellings; `*` means every path in `allowed`.
fn mask_paths(
    violations: &mut Violations,
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&'static str],
) -> Vec<&'static str> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        violations.add(
            "update_mask",
            format!(
                "is required; name the fields to change: {}",
                allowed.join(", ")
            ),
        );
        return Vec::new();
    };
    let mut paths = Vec::new();
    for (index, path) in mask.paths.iter().enumerate() {
        if path == "*" {
            return allowed.to_vec();
        }
        let snake: String = path
            .chars()
            .flat_map(|c| {
                if c.is_ascii_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect();
        match allowed.iter().find(|candidate| **candidate == snake) {
            Some(found) if !paths.contains(found) => paths.push(*found),
            Some(_) => violations.add(
                format!("update_mask.paths[{index}]"),
                format!("{path:?} is listed twice"),
            ),
            None => violations.add(
                format!("update_mask.paths[{index}]"),
                format!(
                    "{path:?} cannot be updated; updatable fields: {}",
                    allowed.join(", ")
                ),
            ),
        }
    }
    paths
}

/// Fields of an identity that UpdateIdentity may change.
pub const IDENTITY_MASK_PATHS: &[&str] = &[
    "name",
    "description",
    "datasets",
    "allowed_cidrs",
    "scopes",
    "labels",
    "admin",
    "expire_time",
    "rate_limits",
];

/// Fields of a key that UpdateKey may change.
pub const KEY_MASK_PATHS: &[&str] = &[
    "name",
    "description",
    "expire_time",
    "allowed_cidrs",
    "scopes",
    "datasets",
    "labels",
    "rate_limits",
    "credits",
    "credits.remaining",
];

/// Checks an UpdateIdentityRequest; the name's rule depends on the identity's
/// kind, so the service checks it.
pub fn identity_changes_in(
    request: proto::UpdateIdentityRequest,
) -> Result<(IdentityId, IdentityChanges), Error> {
    let mut violations = Violations::new();
    let identity = request.identity.unwrap_or_default();
    let id = violations.check("identity.id", IdentityId::parse(&identity.id));
    let mut changes = IdentityChanges::default();
    for path in mask_paths(
        &mut violations,
        request.update_mask.as_ref(),
        IDENTITY_MASK_PATHS,
    ) {
        match path {
            "name" => changes.name = Some(identity.name.clone()),
            "description" => {
                changes.description = violations.check(
                    "identity.description",
                    parse_description(&identity.description),
                )
            }
            "datasets" => {
                changes.datasets = Some(check_datasets(
                    &mut violations,
                    "identity.datasets",
                    &identity.datasets,
                ))
            }
            "allowed_cidrs" => {
                changes.allowed_cidrs = Some(check_cidrs(
                    &mut violations,
                    "identity.allowed_cidrs",
                    &identity.allowed_cidrs,
                ))
            }
            "scopes" => {
                changes.scopes = Some(check_scopes(
                    &mut violations,
                    "identity.scopes",
                    &identity.scopes,
                ))
            }
            "labels" => {
                changes.labels = Some(check_labels(
                    &mut violations,
                    "identity.labels",
                    &identity.labels,
                ))
            }
            "admin" => changes.admin = Some(identity.admin),
            "rate_limits" => {
                changes.rate_limits = Some(check_rate_limits(
                    &mut violations,
                    "identity.rate_limits",
                    &identity.rate_limits,
                ))
            }
            "expire_time" => {
                changes.expire_time = Some(check_expire(
                    &mut violations,
                    "identity.expire_time",
                    identity.expire_time.as_ref(),
                ))
            }
            _ => unreachable!("mask_paths returns only allowed paths"),
        }
    }
    let Some(id) = id else {
        return Err(refusal(violations));
    };
    violations.finish()?;
    Ok((id, changes))
}

/// Checks an UpdateKeyRequest.
pub fn key_changes_in(request: proto::UpdateKeyRequest) -> Result<(KeyId, KeyChanges), Error> {
    let mut violations = Violations::new();
    let key = request.key.unwrap_or_default();
    let id = violations.check("key.id", KeyId::parse(&key.id));
    let mut changes = KeyChanges::default();
    for path in mask_paths(
        &mut violations,
        request.update_mask.as_ref(),
        KEY_MASK_PATHS,
    ) {
        match path {
            "name" => changes.name = violations.check("key.name", parse_name(&key.name)),
            "description" => {
                changes.description =
                    violations.check("key.description", parse_description(&key.description))
            }
            "expire_time" => {
                changes.expire_time = Some(check_expire(
                    &mut violations,
                    "key.expire_time",
                    key.expire_time.as_ref(),
                ))
            }
            "allowed_cidrs" => {
                changes.allowed_cidrs = Some(check_cidrs(
                    &mut violations,
                    "key.allowed_cidrs",
                    &key.allowed_cidrs,
                ))
            }
            "scopes" => {
                changes.scopes = Some(check_scopes(&mut violations, "key.scopes", &key.scopes))
            }
            "datasets" => {
                changes.datasets = Some(check_datasets(
                    &mut violations,
                    "key.datasets",
                    &key.datasets,
                ))
            }
            "labels" => {
                changes.labels = Some(check_labels(&mut violations, "key.labels", &key.labels))
            }
            "rate_limits" => {
                changes.rate_limits = Some(check_rate_limits(
                    &mut violations,
                    "key.rate_limits",
                    &key.rate_limits,
                ))
            }
            "credits" => {
                changes.credits = Some(check_credits(
                    &mut violations,
                    "key.credits",
                    key.credits.as_ref(),
                ))
            }
            "credits.remaining" => {
                changes.credits_remaining = check_credit_balance(
                    &mut violations,
                    "key.credits.remaining",
                    key.credits.as_ref().map_or(0, |credits| credits.remaining),
                )
            }
            _ => unreachable!("mask_paths returns only allowed paths"),
        }
    }
    let Some(id) = id else {
        return Err(refusal(violations));
    };
    violations.finish()?;
    Ok((id, changes))
}

/// A dataset as the API shows it.
pub fn dataset_out(dataset: crate::domain::Dataset) -> proto::Dataset {
    proto::Dataset {
        name: dataset.name.into(),
        description: dataset.description,
        create_time: Some(timestamp_out(dataset.create_time)),
    }
}

/// Checks a CreateDatasetRequest.
pub fn new_dataset_in(
    request: proto::CreateDatasetRequest,
) -> Result<crate::service::NewDataset, Error> {
    let mut violations = Violations::new();
    let name = violations.check("name", DatasetName::parse(&request.name));
    let description = violations.check("description", parse_description(&request.description));
    violations.finish()?;
    let Some(name) = name else {
        return Err(Error::invalid("name", "is required"));
    };
    Ok(crate::service::NewDataset {
        name,
        description: description.unwrap_or_default(),
        skip_key: request.skip_key,
    })
}

/// Checks a field that names a dataset.
pub fn dataset_name_in(field: &str, text: &str) -> Result<String, Error> {
    parse_name(text).map_err(|e| Error::invalid(field, e.to_string()))
}

/// Longest TOTP code field worth reading; real codes have 6 digits.
const MAX_TOTP_CODE_CHARS: usize = 16;

/// Checks a RollKeyRequest.
pub fn roll_in(request: proto::RollKeyRequest) -> Result<RollRequest, Error> {
    use proto::roll_key_request::OldKeyEnd as End;
    let mut violations = Violations::new();
    let key_id = violations.check("key_id", KeyId::parse(&request.key_id));
    let old_key_end = match &request.old_key_end {
        None => Some(OldKeyEnd::Now),
        Some(End::GracePeriod(period)) => violations
            .check(
                "grace_period",
                duration_in(period, crate::service::MAX_GRACE_PERIOD),
            )
            .map(OldKeyEnd::After),
        Some(End::OldKeyExpireTime(time)) => violations
            .check("old_key_expire_time", timestamp_in(time))
            .map(OldKeyEnd::At),
    };
    if request.totp_code.chars().count() > MAX_TOTP_CODE_CHARS {
        violations.add("totp_code", "is not a TOTP code");
    }
    let new_key_expire_time = check_expire(
        &mut violations,
        "new_key_expire_time",
        request.new_key_expire_time.as_ref(),
    );
    let (Some(key_id), Some(old_key_end)) = (key_id, old_key_end) else {
        return Err(refusal(violations));
    };
    violations.finish()?;
    Ok(RollRequest {
        new_key_expire_time,
        key_id,
        old_key_end,
        totp_code: SecretString::new(request.totp_code),
    })
}

/// A request's duration, refusing negative, malformed or too long ones.
pub fn duration_in(
    duration: &prost_types::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, String> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err("must not be negative".into());
    }
    if duration.nanos >= 1_000_000_000 {
        return Err("nanos must be below 1,000,000,000".into());
    }
    let value = std::time::Duration::new(duration.seconds as u64, duration.nanos as u32);
    if value > max {
        return Err(format!("must be at most {} days", max.as_secs() / 86_400));
    }
    Ok(value)
}

/// Longest filter value ListAuditEvents accepts.
const MAX_AUDIT_FILTER_CHARS: usize = 256;

/// ListAuditEvents' filters; empty means "any".
pub fn audit_filter_in(
    request: &proto::ListAuditEventsRequest,
) -> Result<crate::domain::AuditFilter, Error> {
    let mut violations = Violations::new();
    let mut field = |name: &str, value: &str| -> Option<String> {
        if value.chars().count() > MAX_AUDIT_FILTER_CHARS || value.chars().any(char::is_control) {
            violations.add(
                name,
                format!("must be at most {MAX_AUDIT_FILTER_CHARS} printable characters"),
            );
            return None;
        }
        (!value.is_empty()).then(|| value.to_owned())
    };
    let filter = crate::domain::AuditFilter {
        target_id: field("target_id", &request.target_id),
        actor_identity_id: field("actor_identity_id", &request.actor_identity_id),
        action: field("action", &request.action),
    };
    violations.finish()?;
    Ok(filter)
}

/// Most entries in WatchEvents' `kinds` (each kind once is all it takes).
const MAX_EVENT_KINDS: usize = 16;

/// WatchEvents' cursor and filters.
pub fn watch_in(
    request: &proto::WatchEventsRequest,
) -> Result<(Option<String>, crate::service::events::EventFilter), Error> {
    let mut violations = Violations::new();
    if request.kinds.len() > MAX_EVENT_KINDS {
        violations.add("kinds", format!("at most {MAX_EVENT_KINDS} entries"));
    }
    let mut kinds = Vec::new();
    for (index, kind) in request.kinds.iter().enumerate() {
        use crate::domain::EventKind;
        match proto::EventKind::try_from(*kind) {
            Ok(proto::EventKind::Audit) => kinds.push(EventKind::Audit),
            Ok(proto::EventKind::HoneytokenUsed) => kinds.push(EventKind::HoneytokenUsed),
            Ok(proto::EventKind::KeyExpiring) => kinds.push(EventKind::KeyExpiring),
            Ok(proto::EventKind::KeyExpired) => kinds.push(EventKind::KeyExpired),
            Ok(proto::EventKind::GraceEnded) => kinds.push(EventKind::GraceEnded),
            Ok(proto::EventKind::Unspecified) | Err(_) => violations.add(
                format!("kinds[{index}]"),
                "must be an event kind (AUDIT, HONEYTOKEN_USED, KEY_EXPIRING, KEY_EXPIRED, GRACE_ENDED)",
            ),
        }
    }
    let identity = match request.identity_id.as_str() {
        "" => None,
        text => violations.check("identity_id", IdentityId::parse(text)),
    };
    violations.finish()?;
    let cursor = (!request.after_cursor.is_empty()).then(|| request.after_cursor.clone());
    Ok((
        cursor,
        crate::service::events::EventFilter { kinds, identity },
    ))
}

/// A WatchEvents item as the API shows it.
pub fn watch_item_out(item: crate::service::events::WatchItem) -> proto::WatchEventsResponse {
    use crate::service::events::WatchItem;
    use proto::watch_events_response::Payload;
    let payload = match item {
        WatchItem::Event(event) => Payload::Event(proto::Event {
            cursor: event.id.clone(),
            kind: match event.kind() {
                crate::domain::EventKind::Audit => proto::EventKind::Audit,
                crate::domain::EventKind::HoneytokenUsed => proto::EventKind::HoneytokenUsed,
                crate::domain::EventKind::KeyExpiring => proto::EventKind::KeyExpiring,
                crate::domain::EventKind::KeyExpired => proto::EventKind::KeyExpired,
                crate::domain::EventKind::GraceEnded => proto::EventKind::GraceEnded,
            }
            .into(),
            audit_event: Some(audit_event_out(event)),
        }),
        WatchItem::Heartbeat { time, cursor } => Payload::Heartbeat(proto::Heartbeat {
            time: Some(timestamp_out(time)),
            cursor,
        }),
    };
    proto::WatchEventsResponse {
        payload: Some(payload),
    }
}

/// An audit event as the API shows it.
pub fn audit_event_out(event: crate::domain::AuditEvent) -> proto::AuditEvent {
    proto::AuditEvent {
        id: event.id,
        time: Some(timestamp_out(event.time)),
        actor_identity_id: event.actor_identity_id.unwrap_or_default(),
        actor_key_id: event.actor_key_id.unwrap_or_default(),
        action: event.action,
        target_ids: event.target_ids,
        outcome: event.outcome,
        caller_address: event.caller_address.unwrap_or_default(),
        request_id: event.request_id,
        client_ip: event.client_ip.unwrap_or_default(),
        trace_id: event.trace_id.unwrap_or_default(),
        deadline_time: event.deadline.map(timestamp_out),
        lead_time: event
            .lead_time_seconds
            .map(|seconds| prost_types::Duration {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            }),
    }
}

/// Checks a ListKeysRequest: the identity (optional), filter and order.
pub fn key_query_in(request: &proto::ListKeysRequest) -> Result<crate::service::KeyQuery, Error> {
    let mut violations = Violations::new();
    let identity_id = match request.identity_id.as_str() {
        "" => None,
        id => violations.check("identity_id", IdentityId::parse(id)),
    };
    let filter = violations.check("filter", super::filter::parse_key_filter(&request.filter));
    let order = violations.check("order_by", key_order_in(&request.order_by));
    violations.finish()?;
    Ok(crate::service::KeyQuery {
        identity_id,
        filter: filter.unwrap_or_default(),
        order: order.unwrap_or_default(),
    })
}

/// Parses `order_by`: a field, optionally followed by `desc` (or `asc`).
fn key_order_in(text: &str) -> Result<crate::service::KeyOrder, String> {
    use crate::service::{KeyOrder, KeyOrderField};
    let words: Vec<&str> = text.split_whitespace().collect();
    let (field, descending) = match words.as_slice() {
        [] => return Ok(KeyOrder::default()),
        [field] => (*field, false),
        [field, "desc"] => (*field, true),
        [field, "asc"] => (*field, false),
        _ => return Err(format!("{text:?} is not `<field>` or `<field> desc`")),
    };
    let field = KeyOrderField::parse(field).filter(|f| *f != KeyOrderField::Id).ok_or_else(|| {
        format!("cannot order by {field:?}; order by create_time, expire_time, last_use_time or name")
    })?;
    Ok(KeyOrder { field, descending })
}

/// Checks a BatchRevokeKeysRequest's filter (required) and TOTP code.
pub fn batch_revoke_in(
    filter: String,
    totp_code: String,
) -> Result<(crate::domain::key::KeyFilter, SecretString), Error> {
    let mut violations = Violations::new();
    if filter.trim().is_empty() {
        violations.add(
            "filter",
            "is required: a batch revoke names what it selects, e.g. `labels.team = \"old\"`",
        );
    }
    let parsed = violations.check("filter", super::filter::parse_key_filter(&filter));
    if totp_code.chars().count() > MAX_TOTP_CODE_CHARS {
        violations.add("totp_code", "is not a TOTP code");
    }
    violations.finish()?;
    Ok((parsed.unwrap_or_default(), SecretString::new(totp_code)))
}

/// Checks an ImportKeysRequest's own fields (the tokens' rules need the
/// store, so the service checks them).
pub fn import_in(
    request: proto::ImportKeysRequest,
) -> Result<(IdentityId, Vec<crate::service::ImportedKey>), Error> {
    use crate::service::MAX_IMPORTED_KEYS;
    let mut violations = Violations::new();
    let identity_id = violations.check("identity_id", IdentityId::parse(&request.identity_id));
    if request.keys.is_empty() || request.keys.len() > MAX_IMPORTED_KEYS {
        violations.add("keys", format!("must hold 1 to {MAX_IMPORTED_KEYS} keys"));
    }
    let mut names: Vec<String> = Vec::new();
    let mut keys = Vec::with_capacity(request.keys.len());
    for (index, key) in request.keys.into_iter().enumerate() {
        let name = violations.check(&format!("keys[{index}].name"), parse_name(&key.name));
        if let Some(name) = &name {
            if names.contains(name) {
                violations.add(
                    format!("keys[{index}].name"),
                    format!("{name:?} is listed twice"),
                );
            }
            names.push(name.clone());
        }
        let description = violations.check(
            &format!("keys[{index}].description"),
            parse_description(&key.description),
        );
        let expire_time = check_expire(
            &mut violations,
            &format!("keys[{index}].expire_time"),
            key.expire_time.as_ref(),
        );
        keys.push(crate::service::ImportedKey {
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            expire_time,
            token: SecretString::new(key.token),
            disabled: key.disabled,
        });
    }
    violations.finish()?;
    let Some(identity_id) = identity_id else {
        return Err(Error::invalid("identity_id", "is required"));
    };
    Ok((identity_id, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_refuse_out_of_range() {
        let time = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        let millis = timestamp_in(&time).unwrap();
        assert_eq!(millis, UnixMillis(1_700_000_000_123));
        assert_eq!(timestamp_out(millis), time);
        assert!(
            timestamp_in(&prost_types::Timestamp {
                seconds: -1,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            timestamp_in(&prost_types::Timestamp {
                seconds: 1,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            timestamp_in(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }

    #[test]
    fn create_identity_reports_every_bad_field() {
        let request = proto::CreateIdentityRequest {
            name: "bad name".into(),
            description: "x".repeat(300),
            allowed_cidrs: vec!["10.0.0.0/8".into(), "300.1.1.1/8".into()],
            datasets: vec!["a".into(), "a".into()],
            ..Default::default()
        };
        let Err(Error::InvalidArgument(violations)) = new_identity_in(request) else {
            panic!("accepted")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "description", "datasets[1]", "allowed_cidrs[1]"]
        );
    }

    #[test]
    fn masks_accept_json_spelling_and_refuse_unknown_paths() {
        let request = proto::UpdateIdentityRequest {
            identity: Some(proto::Identity {
                id: "abcdefghijkl".into(),
                allowed_cidrs: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["allowedCidrs".into()],
            }),
        };
        let (_, changes) = identity_changes_in(request).unwrap();
        assert_eq!(changes.allowed_cidrs.unwrap().len(), 1);
        let request = proto::UpdateIdentityRequest {
            identity: Some(proto::Identity {
                id: "abcdefghijkl".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["kind".into()],
            }),
        };
        assert!(matches!(
            identity_changes_in(request),
            Err(Error::InvalidArgument(_))
        ));
        let request = proto::UpdateIdentityRequest {
            identity: None,
            update_mask: None,
        };
        assert!(
            matches!(identity_changes_in(request), Err(Error::InvalidArgument(v)) if v.len() == 2)
        );
    }
}
