//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization`):
//! Envoy sends each HTTP request's attributes, keyrack answers with Verify's
//! decision as an HTTP outcome. Allowed requests continue upstream with the
//! caller's identity in `x-keyrack-*` headers; refused ones get 401, 403 or
//! 429 from Envoy without reaching the upstream.

mod answer;
mod request_view;
mod server;

pub use server::ExtAuthzServer;

use super::telemetry::code_name;
use super::verify::{count_outcome, record_verdict};
use crate::domain::names::parse_name;
use crate::domain::scope::parse_scopes;
use crate::domain::token::bearer_credential;
use crate::domain::{Error, IdentityKind, Verdict, VerifyCode};
use crate::service::{Authority, CallContext, VerifyQuery};
use answer::{AllowedAnswer, CheckAnswer};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::rpc;
use request_view::{AttributesView, CheckRequestView, HttpRequestView};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// The headers an allowed request carries upstream, always set by keyrack.
pub const IDENTITY_ID_HEADER: &str = "x-keyrack-identity-id";
/// The verified identity's name.
pub const IDENTITY_NAME_HEADER: &str = "x-keyrack-identity-name";
/// The verified identity's kind: `SERVICE` or `PERSON`.
pub const IDENTITY_KIND_HEADER: &str = "x-keyrack-identity-kind";
/// The key the request was made with.
pub const KEY_ID_HEADER: &str = "x-keyrack-key-id";
/// What every header keyrack owns starts with; a client may send none of them.
const KEYRACK_HEADER_PREFIX: &str = "x-keyrack-";

/// Route settings Envoy passes in `context_extensions`: a dataset the key
/// must have access to,
const DATASET_EXTENSION: &str = "keyrack-dataset";
/// scopes it must hold (space-separated),
const SCOPES_EXTENSION: &str = "keyrack-scopes";
/// `"true"` when the request's path is itself a scope it must hold,
const SCOPE_FROM_PATH_EXTENSION: &str = "keyrack-scope-from-path";
/// and what the request spends of the key's rate limits and credits.
const COST_EXTENSION: &str = "keyrack-cost";
/// Every route setting this keyrack understands. Any other `keyrack-*`
/// extension is a requirement it cannot enforce (a typo, or a setting of a
/// newer keyrack), so the request is refused rather than the setting ignored.
const KNOWN_EXTENSIONS: &[&str] = &[
    DATASET_EXTENSION,
    SCOPES_EXTENSION,
    SCOPE_FROM_PATH_EXTENSION,
    COST_EXTENSION,
];
const EXTENSION_PREFIX: &str = "keyrack-";

/// `retry-after` for a usage refusal that no wait cures (spent credits
/// without a refill, a cost beyond what a limit's bucket or a refill holds):
/// only an admin's change helps, and a day is a polite pause for a client
/// that retries anyway.
const NO_WAIT_HELPS_RETRY_AFTER_MS: u64 = 86_400_000;

/// When a call refused for its rate limits or credits can pass.
fn usage_retry_after_ms(verdict: &Verdict) -> u64 {
    verdict
        .usage
        .as_ref()
        .and_then(|usage| usage.retry_after_ms)
        .unwrap_or(NO_WAIT_HELPS_RETRY_AFTER_MS)
}

/// How Check reads the credential and what it passes upstream.
#[derive(Debug, Clone)]
pub struct ExtAuthzOptions {
    /// The request header holding the token: `authorization` (as `Bearer
    /// <token>`) or any other header, which then holds the raw token.
    pub token_header: http::HeaderName,
    /// Pass the credential header upstream rather than removing it.
    pub keep_credential: bool,
}

/// The Authorization service implementation.
#[derive(Clone)]
pub struct ExtAuthzApi {
    authority: Arc<Authority>,
    options: Arc<ExtAuthzOptions>,
    /// The credential header's name as each allowed answer lists it for
    /// removal.
    credential_header: Bytes,
    /// Sent as `retry-after` with a 429: a throttled key takes no new
    /// guesses for this long.
    retry_after: Duration,
}

impl ExtAuthzApi {
    /// Answers Check from `authority`.
    pub fn new(authority: Arc<Authority>, options: ExtAuthzOptions) -> Self {
        let retry_after = authority.throttle_window();
        Self {
            authority,
            credential_header: Bytes::copy_from_slice(options.token_header.as_str().as_bytes()),
            options: Arc::new(options),
            retry_after,
        }
    }

    /// The token of the configured credential header, if the request has one.
    fn token<'a>(&self, http: HttpRequestView<'a>) -> Option<&'a str> {
        let value = http.header(self.options.token_header.as_str())?;
        let token = if self.options.token_header == http::header::AUTHORIZATION {
            bearer_credential(value)?
        } else {
            value.trim()
        };
        (!token.is_empty()).then_some(token)
    }

    /// The headers to drop before the request goes upstream: the credential
    /// (unless kept) and every `x-keyrack-*` header the client sent that
    /// keyrack does not overwrite. Envoy removes after it sets, so the
    /// identity headers must not be listed.
    fn headers_to_remove(&self, http: HttpRequestView<'_>) -> Vec<Bytes> {
        let mut remove: Vec<Bytes> = Vec::with_capacity(1);
        for name in http.header_names() {
            // A name sent twice is removed once, as when headers were a map.
            if name.starts_with(KEYRACK_HEADER_PREFIX.as_bytes())
                && !IDENTITY_HEADERS
                    .iter()
                    .any(|owned| owned.as_bytes() == name)
                && !remove.iter().any(|listed| listed == name)
            {
                remove.push(Bytes::copy_from_slice(name));
            }
        }
        if !self.options.keep_credential {
            remove.push(self.credential_header.clone());
        }
        remove
    }
}

const IDENTITY_HEADERS: [&str; 4] = [
    IDENTITY_ID_HEADER,
    IDENTITY_NAME_HEADER,
    IDENTITY_KIND_HEADER,
    KEY_ID_HEADER,
];

/// What a route requires of the key, from its `context_extensions`.
struct RouteRequirements<'a> {
    dataset: Option<&'a str>,
    scopes: Vec<String>,
    cost: u64,
}

/// Reads the route's settings. A bad one is the operator's mistake: the
/// error makes Envoy refuse the request (fail closed) and log it, rather
/// than keyrack guessing what was meant.
fn route_requirements<'a>(
    attributes: AttributesView<'a>,
    http: HttpRequestView<'a>,
) -> Result<RouteRequirements<'a>, Status> {
    let invalid = |name: &str, reason: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("context extension {name}: {reason}"))
    };
    if let Some(unknown) = attributes
        .context_extension_names()
        .find(|name| name.starts_with(EXTENSION_PREFIX) && !KNOWN_EXTENSIONS.contains(name))
    {
        return Err(invalid(
            unknown,
            &format!(
                "not a setting this keyrack enforces (known: {})",
                KNOWN_EXTENSIONS.join(", ")
            ),
        ));
    }
    let dataset = match attributes.context_extension(DATASET_EXTENSION) {
        None => None,
        Some(name) => Some(
            parse_name(name)
                .map(|_| name)
                .map_err(|reason| invalid(DATASET_EXTENSION, &reason))?,
        ),
    };
    let listed: Vec<String> = attributes
        .context_extension(SCOPES_EXTENSION)
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut scopes = parse_scopes(SCOPES_EXTENSION, &listed).map_err(|errors| {
        let reasons: Vec<String> = errors
            .into_iter()
            .map(|(field, why)| format!("{field}: {why}"))
            .collect();
        invalid(SCOPES_EXTENSION, &reasons.join("; "))
    })?;
    match attributes.context_extension(SCOPE_FROM_PATH_EXTENSION) {
        None | Some("false") => {}
        // The path without its query string. It is the client's, so it is
        // not checked as a scope's syntax: a path no grant covers, or one
        // with a dot segment, an escape or a backslash, is a scope no key
        // holds (`scope::holds`).
        Some("true") => {
            let path = http.path();
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            scopes.push(path.to_owned());
        }
        Some(other) => {
            return Err(invalid(
                SCOPE_FROM_PATH_EXTENSION,
                &format!("{other:?} is neither \"true\" nor \"false\""),
            ));
        }
    }
    let cost = match attributes.context_extension(COST_EXTENSION) {
        None => 1,
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| "is not a whole number".to_owned())
            .and_then(super::convert::cost_in)
            .map_err(|reason| invalid(COST_EXTENSION, &reason))?,
    };
    Ok(RouteRequirements {
        dataset,
        scopes,
        cost,
    })
}

fn kind_name(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Service => "SERVICE",
        IdentityKind::Person => "PERSON",
    }
}

/// A header Envoy sets, replacing any value the request already had.
fn overwrite(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

/// Why a request is refused, as Envoy answers it.
struct Refusal {
    status: HttpStatusCode,
    grpc_code: tonic::Code,
    /// The JSON body's `code`: a Verify code name, `MISSING_CREDENTIAL` or
    /// `THROTTLED`.
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn of_verdict(verdict: &Verdict, dataset: Option<&str>) -> Self {
        let code = verdict.code;
        let mut retry_after = None;
        let (status, grpc_code, message) = match code {
            VerifyCode::Valid => unreachable!("a valid verdict is not refused"),
            VerifyCode::Malformed => (
                HttpStatusCode::Unauthorized,
                tonic::Code::Unauthenticated,
                "the credential is not a keyrack token".to_owned(),
            ),
            VerifyCode::Unknown => (
                HttpStatusCode::Unauthorized,
                tonic::Code::Unauthenticated,
                "the token is not valid".to_owned(),
            ),
            VerifyCode::Disabled => (
                HttpStatusCode::Forbidden,
                tonic::Code::PermissionDenied,
                "the key or its identity is disabled".to_owned(),
            ),
            VerifyCode::IpNotAllowed => (
                HttpStatusCode::Forbidden,
                tonic::Code::PermissionDenied,
                "the client address is not allowed for this key".to_owned(),
            ),
            VerifyCode::DatasetNotAllowed => (
                HttpStatusCode::Forbidden,
                tonic::Code::PermissionDenied,
                format!(
                    "the key has no access to dataset {}",
                    dataset.unwrap_or_default()
                ),
            ),
            VerifyCode::ScopeNotAllowed => (
                HttpStatusCode::Forbidden,
                tonic::Code::PermissionDenied,
                "the key does not hold every scope this route requires".to_owned(),
            ),
            VerifyCode::RateLimited => {
                retry_after = Some(usage_retry_after_ms(verdict));
                (
                    HttpStatusCode::TooManyRequests,
                    tonic::Code::ResourceExhausted,
                    "a rate limit of the key or its identity is reached".to_owned(),
                )
            }
            VerifyCode::UsageExceeded => {
                retry_after = Some(usage_retry_after_ms(verdict));
                (
                    HttpStatusCode::TooManyRequests,
                    tonic::Code::ResourceExhausted,
                    "the key's credits are spent".to_owned(),
                )
            }
        };
        Self {
            status,
            grpc_code,
            code: code.name(),
            message,
            retry_after: retry_after.map(Duration::from_millis),
        }
    }

    fn into_response(self) -> CheckAnswer {
        let mut headers = vec![overwrite("content-type", "application/json")];
        if self.status == HttpStatusCode::Unauthorized {
            headers.push(overwrite("www-authenticate", r#"Bearer realm="keyrack""#));
        }
        if let Some(retry_after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long passes.
            let seconds = retry_after.as_millis().div_ceil(1_000).max(1);
            headers.push(overwrite("retry-after", seconds.to_string()));
        }
        let body = serde_json::json!({ "code": self.code, "message": self.message }).to_string();
        CheckAnswer::Refused(CheckResponse {
            status: Some(rpc::Status {
                code: self.grpc_code as i32,
                message: self.message,
                details: Vec::new(),
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: self.status.into(),
                    }),
                    headers,
                    body,
                },
            )),
            dynamic_metadata: None,
        })
    }
}

/// The OK answer: identity headers set, client copies and credential removed,
/// the same values as dynamic metadata for Envoy's other filters and logs.
/// The verdict's values move into the answer: nothing is copied.
fn allowed(verdict: Verdict, headers_to_remove: Vec<Bytes>) -> CheckAnswer {
    let Some(subject) = verdict.subject else {
        unreachable!("a valid verdict names its key and identity")
    };
    let (key, identity) = *subject;
    CheckAnswer::Allowed(AllowedAnswer {
        identity_kind: kind_name(identity.kind),
        identity_id: identity.id,
        identity_name: identity.name,
        key_id: key.id,
        headers_to_remove,
    })
}

impl ExtAuthzApi {
    /// Envoy's question about one HTTP request, answered. The request
    /// carries the credential: it is never formatted or logged.
    async fn check(&self, request: CheckRequestView) -> Result<CheckAnswer, Status> {
        let Some(attributes) = request.attributes() else {
            return Err(Status::invalid_argument("attributes are required"));
        };
        let http = attributes
            .http()
            .ok_or_else(|| Status::invalid_argument("attributes.request.http is required"))?;
        let route = route_requirements(attributes, http)?;
        let Some(token) = self.token(http) else {
            let header = self.options.token_header.as_str();
            let expected = if self.options.token_header == http::header::AUTHORIZATION {
                "`authorization: Bearer <token>`".to_owned()
            } else {
                format!("the `{header}` header")
            };
            let refusal = Refusal {
                status: HttpStatusCode::Unauthorized,
                grpc_code: tonic::Code::Unauthenticated,
                code: "MISSING_CREDENTIAL",
                message: format!("no credential: send {expected}"),
                retry_after: None,
            };
            return Ok(refusal.into_response());
        };
        // The peer of a Check is Envoy; the caller is the HTTP request's
        // source, and its request and trace ids travel in its headers.
        let peer = attributes.source();
        let context = CallContext::from_headers(peer, |name| http.header(name));
        let query = VerifyQuery {
            token,
            dataset: route.dataset,
            client_ip: peer.map(|peer| peer.ip()),
            required_scopes: &route.scopes,
            context,
            cost: route.cost,
        };
        let verdict = match self.authority.verify(query).await {
            Ok(verdict) => verdict,
            Err(Error::ResourceExhausted(reason)) => {
                count_outcome(code_name(tonic::Code::ResourceExhausted));
                let refusal = Refusal {
                    status: HttpStatusCode::TooManyRequests,
                    grpc_code: tonic::Code::ResourceExhausted,
                    code: "THROTTLED",
                    message: reason,
                    retry_after: Some(self.retry_after),
                };
                return Ok(refusal.into_response());
            }
            // A store outage is an error status, never a decision: Envoy
            // with failure_mode_allow: false refuses the request.
            Err(error) => {
                let status = Status::from(error);
                count_outcome(code_name(status.code()));
                return Err(status);
            }
        };
        record_verdict(&verdict);
        let response = if verdict.is_valid() {
            allowed(verdict, self.headers_to_remove(http))
        } else {
            Refusal::of_verdict(&verdict, route.dataset).into_response()
        };
        Ok(response)
    }
}
