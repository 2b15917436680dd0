//! VerifyService.

use super::telemetry::{code_name, field};
use super::{bearer_token, convert};
use crate::domain::names::parse_name;
use crate::domain::{Verdict, VerifyCode, Violations};
use crate::metrics::{OutcomeLabels, metrics};
use crate::proto::{self, verify_service_server::VerifyService};
use crate::service::{Authority, CallContext, VerifyQuery};
use std::net::IpAddr;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The VerifyService implementation.
#[derive(Clone)]
pub struct VerifyApi {
    authority: Arc<Authority>,
}

impl VerifyApi {
    /// Serves Verify from `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

fn code_out(code: VerifyCode) -> proto::VerifyCode {
    match code {
        VerifyCode::Valid => proto::VerifyCode::Valid,
        VerifyCode::Malformed => proto::VerifyCode::Malformed,
        VerifyCode::Unknown => proto::VerifyCode::Unknown,
        VerifyCode::Disabled => proto::VerifyCode::Disabled,
        VerifyCode::IpNotAllowed => proto::VerifyCode::IpNotAllowed,
        VerifyCode::DatasetNotAllowed => proto::VerifyCode::DatasetNotAllowed,
        VerifyCode::ScopeNotAllowed => proto::VerifyCode::ScopeNotAllowed,
        VerifyCode::RateLimited => proto::VerifyCode::RateLimited,
        VerifyCode::UsageExceeded => proto::VerifyCode::UsageExceeded,
    }
}

fn verdict_out(verdict: Verdict) -> proto::VerifyResponse {
    let expire_time = verdict.expire_time().map(convert::timestamp_out);
    let mut response = proto::VerifyResponse {
        valid: verdict.is_valid(),
        code: code_out(verdict.code).into(),
        expire_time,
        ..Default::default()
    };
    if let Some(usage) = &verdict.usage {
        (
            response.rate_limits,
            response.credits_remaining,
            response.retry_after,
        ) = convert::usage_out(usage);
    }
    if let Some(subject) = verdict.subject {
        let (key, identity) = *subject;
        response.in_grace = key.in_grace();
        response.key_id = key.id.to_string();
        response.datasets = key.effective_datasets(&identity);
        response.scopes = key.effective_scopes(&identity);
        response.labels = key.effective_labels(&identity).into_iter().collect();
        response.identity = Some(proto::VerifiedIdentity {
            id: identity.id.to_string(),
            name: identity.name.into(),
            kind: convert::kind_out(identity.kind).into(),
        });
    }
    response
}

/// Counts one Verify answer (a verdict's code, or the error that stopped it).
pub(super) fn count_outcome(code: &'static str) {
    metrics()
        .verify_outcomes
        .get_or_create(&OutcomeLabels { code })
        .inc();
}

/// Counts a verdict and puts its code and ids on the call's span (Verify and
/// ext_authz Check make the same decision).
pub(super) fn record_verdict(verdict: &Verdict) {
    count_outcome(verdict.code.name());
    let span = tracing::Span::current();
    span.record(field::VERIFY_CODE, verdict.code.name());
    if let Some((key, identity)) = verdict.subject.as_deref() {
        span.record(field::KEY_ID, key.id.as_str());
        span.record(field::IDENTITY_ID, identity.id.as_str());
    }
}

#[tonic::async_trait]
impl VerifyService for VerifyApi {
    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let peer = request.remote_addr();
        let (metadata, _, request) = request.into_parts();
        let text_of = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok());
        let context = CallContext::from_headers(peer, text_of);
        let token = if request.token.is_empty() {
            bearer_token(&metadata).unwrap_or_default()
        } else {
            request.token.as_str()
        };
        let mut violations = Violations::new();
        if token.is_empty() {
            violations.add(
                "token",
                "is required (or send `authorization: Bearer <token>` metadata)",
            );
        }
        if !request.dataset.is_empty() {
            violations.check("dataset", parse_name(&request.dataset));
        }
        let required_scopes =
            convert::check_scopes(&mut violations, "required_scopes", &request.required_scopes);
        let client_ip = match request.client_ip.as_str() {
            "" => None,
            text => violations.check(
                "client_ip",
                text.parse::<IpAddr>()
                    .map_err(|_| "is not an IPv4 or IPv6 address"),
            ),
        };
        let cost = match request.cost {
            None => 1,
            Some(cost) => violations
                .check("cost", convert::cost_in(cost))
                .unwrap_or_default(),
        };
        violations.finish()?;
        let query = VerifyQuery {
            cost,
            token,
            dataset: (!request.dataset.is_empty()).then_some(request.dataset.as_str()),
            client_ip,
            required_scopes: &required_scopes,
            context,
        };
        // A store outage is an error status, never a verdict: fail closed.
        let verdict = match self.authority.verify(query).await {
            Ok(verdict) => verdict,
            Err(error) => {
                let status = Status::from(error);
                count_outcome(code_name(status.code()));
                return Err(status);
            }
        };
        record_verdict(&verdict);
        Ok(Response::new(verdict_out(verdict)))
    }
}
