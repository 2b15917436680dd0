//! The console's handlers: each reads a form or query, checks it with the
//! domain's parsers, calls the `Authority`, and renders a page or redirects.
//! Changes run through [`Admin::change`], so each leaves the audit event the
//! Admin API would, under the same action name.

use super::views::{self, AuditFilters, IdentityFilters};
use super::{Admin, ConsoleState, Failure, Shared, set_cookie, to_sign_in};
use crate::domain::identity::IdentityFilter;
use crate::domain::names::{
    DatasetName, IdentityName, NameError, parse_description, parse_name, parse_person_name,
};
use crate::domain::{
    AuditFilter, Error, IdentityId, IdentityKind, KeyId, SecretString, State as LifeState,
    UnixMillis, Violations, cidr, scope,
};
use crate::scim::listener::Peer;
use crate::service::{
    Authority, CallContext, IdentityChanges, MintedKey, NewDataset, NewIdentity, NewKey, OldKeyEnd,
    PageRequest, RollRequest,
};
use axum::Form;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use ipnet::IpNet;
use serde::Deserialize;

type Reply = Result<Response, Failure>;

/// Rows per listing page.
const PAGE_ROWS: usize = 50;
/// Datasets offered as suggestions in forms.
const DATASET_SUGGESTIONS: usize = 200;
/// Longest TOTP code field accepted.
const MAX_TOTP_CODE_CHARS: usize = 16;

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// Splits a list field: entries separated by commas or whitespace.
fn entries(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

fn check_names(violations: &mut Violations, field: &str, text: &str) -> Vec<String> {
    entries(text)
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            violations.check(&format!("{field}[{index}]"), parse_name(entry))
        })
        .collect()
}

fn check_cidrs(violations: &mut Violations, field: &str, text: &str) -> Vec<IpNet> {
    cidr::parse_cidrs(field, &entries(text)).unwrap_or_else(|errors| {
        for (field, why) in errors {
            violations.add(field, why);
        }
        Vec::new()
    })
}

fn check_scopes(violations: &mut Violations, field: &str, text: &str) -> Vec<String> {
    scope::parse_scopes(field, &entries(text)).unwrap_or_else(|errors| {
        for (field, why) in errors {
            violations.add(field, why);
        }
        Vec::new()
    })
}

/// A `datetime-local` value, read as UTC; empty means none.
fn check_time(violations: &mut Violations, field: &str, text: &str) -> Option<UnixMillis> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // The input gives minutes, sometimes seconds; RFC 3339 wants seconds.
    let full = if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_owned()
    };
    let parsed = humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|since| i64::try_from(since.as_millis()).ok());
    if parsed.is_none() {
        violations.add(
            field,
            "is not a date and time such as 2030-01-31T12:00 (UTC)",
        );
    }
    parsed.map(UnixMillis)
}

/// A `state` filter: empty for any.
fn check_state(violations: &mut Violations, text: &str) -> Option<LifeState> {
    match text {
        "" => None,
        "active" => Some(LifeState::Active),
        "disabled" => Some(LifeState::Disabled),
        _ => {
            violations.add("state", "is active or disabled");
            None
        }
    }
}

fn identity_id(text: &str) -> Result<IdentityId, Failure> {
    IdentityId::parse(text).map_err(|e| Error::invalid("identity_id", e.to_string()).into())
}

fn key_id(text: &str) -> Result<KeyId, Failure> {
    KeyId::parse(text).map_err(|e| Error::invalid("key_id", e.to_string()).into())
}

fn page_request(page_token: Option<String>) -> PageRequest {
    PageRequest {
        page_size: PAGE_ROWS,
        page_token: page_token.unwrap_or_default(),
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}

/// The token page for a key just minted.
async fn show_minted(
    authority: &Authority,
    admin: &Admin,
    title: &str,
    minted: &MintedKey,
) -> Reply {
    let identity = authority.get_identity(&minted.key.identity_id).await?;
    Ok(html(views::minted(
        &admin.viewer(),
        title,
        &identity,
        minted.key.id.as_str(),
        minted.token.expose(),
    )))
}

fn back_to_identity(id: &IdentityId) -> Response {
    Redirect::to(&format!("/identities/{id}#keys")).into_response()
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    token: String,
}

pub(super) async fn sign_in_page() -> Response {
    html(views::sign_in(None))
}

/// Exchanges an admin token for a session cookie.
pub(super) async fn sign_in(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: header::HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let token = SecretString::new(form.token.trim().to_owned());
    let ConsoleState { authority, options } = &*state;
    let context = CallContext::from_headers(Some(peer), |name| {
        headers.get(name).and_then(|value| value.to_str().ok())
    });
    match authority
        .open_console_session(token.expose(), context, options.session_ttl)
        .await
    {
        Ok(opened) => {
            let event = crate::service::audit::event(
                "ConsoleSignIn",
                Some(&opened.caller),
                Some(peer),
                crate::service::audit::request_id(None),
            );
            let _ = authority
                .audited(event, async { Ok::<_, Error>(()) }, |error| {
                    error.code_name().to_owned()
                })
                .await;
            let mut response = Redirect::to("/identities").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(
                    opened.cookie.expose(),
                    options.session_ttl,
                    options.tls.is_some(),
                ),
            );
            response
        }
        Err(error @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => (
            StatusCode::UNAUTHORIZED,
            html(views::sign_in(Some(&error.to_string()))),
        )
            .into_response(),
        Err(error) => Failure::from(error).into_response(),
    }
}

pub(super) async fn sign_out(State(state): Shared, Extension(admin): Extension<Admin>) -> Reply {
    admin
        .change(
            &state.authority,
            "ConsoleSignOut",
            None,
            state.authority.close_console_session(admin.cookie.expose()),
        )
        .await?;
    Ok(to_sign_in(true, state.options.tls.is_some()))
}

#[derive(Deserialize, Default)]
pub(super) struct IdentityQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    dataset: String,
    page_token: Option<String>,
}

async fn dataset_suggestions(authority: &Authority) -> Result<Vec<crate::domain::Dataset>, Error> {
    let page = PageRequest {
        page_size: DATASET_SUGGESTIONS,
        page_token: String::new(),
    };
    Ok(authority.list_datasets(&page).await?.items)
}

pub(super) async fn identities(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Query(query): Query<IdentityQuery>,
) -> Reply {
    let mut violations = Violations::new();
    let kind = match query.kind.as_str() {
        "" => None,
        "service" => Some(IdentityKind::Service),
        "person" => Some(IdentityKind::Person),
        _ => {
            violations.add("kind", "is service or person");
            None
        }
    };
    let life = check_state(&mut violations, &query.state);
    violations.finish()?;
    let filter = IdentityFilter {
        kind,
        state: life,
        dataset: optional(&query.dataset),
        ..IdentityFilter::default()
    };
    let page = state
        .authority
        .list_identities(&page_request(query.page_token), |identity| {
            filter.matches(identity)
        })
        .await?;
    let datasets = dataset_suggestions(&state.authority).await?;
    let filters = IdentityFilters {
        kind: query.kind,
        state: query.state,
        dataset: query.dataset,
    };
    Ok(html(views::identities(
        &admin.viewer(),
        &filters,
        &page.items,
        page.next_page_token,
        &datasets,
    )))
}

/// The fields an identity or key form shares; `admin` is on the create
/// identity form only.
#[derive(Deserialize)]
pub(super) struct RecordForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    datasets: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    allowed_cidrs: String,
    #[serde(default)]
    expire_time: String,
    #[serde(default)]
    admin: Option<String>,
}

/// A [`RecordForm`] that passed every check.
struct CheckedRecord {
    name: String,
    description: String,
    datasets: Vec<String>,
    allowed_cidrs: Vec<IpNet>,
    scopes: Vec<String>,
    expire_time: Option<UnixMillis>,
}

impl RecordForm {
    /// Checks every field, reporting all bad ones at once; the name by the
    /// rule of services and keys.
    fn checked(&self) -> Result<CheckedRecord, Error> {
        self.checked_with(parse_name)
    }

    /// Checks every field, the name by `name_rule`.
    fn checked_with(
        &self,
        name_rule: fn(&str) -> Result<String, NameError>,
    ) -> Result<CheckedRecord, Error> {
        let mut violations = Violations::new();
        let name = violations.check("name", name_rule(&self.name));
        let description = violations.check("description", parse_description(&self.description));
        let datasets = check_names(&mut violations, "datasets", &self.datasets);
        let allowed_cidrs = check_cidrs(&mut violations, "allowed_cidrs", &self.allowed_cidrs);
        let scopes = check_scopes(&mut violations, "scopes", &self.scopes);
        let expire_time = check_time(&mut violations, "expire_time", &self.expire_time);
        violations.finish()?;
        Ok(CheckedRecord {
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            datasets,
            allowed_cidrs,
            scopes,
            expire_time,
        })
    }
}

pub(super) async fn create_identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Form(form): Form<RecordForm>,
) -> Reply {
    let record = form.checked()?;
    let name = IdentityName::parse_service(&record.name)
        .map_err(|e| Error::invalid("name", e.to_string()))?;
    let request = NewIdentity {
        name,
        description: record.description,
        datasets: record.datasets,
        allowed_cidrs: record.allowed_cidrs,
        scopes: record.scopes,
        admin: form.admin.is_some(),
        expire_time: record.expire_time,
        labels: Default::default(),
        rate_limits: Vec::new(),
    };
    let authority = &state.authority;
    let (_, minted) = admin
        .change(
            authority,
            "CreateIdentity",
            None,
            authority.create_identity(request),
        )
        .await?;
    show_minted(authority, &admin, "Identity created", &minted).await
}

pub(super) async fn identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    let id = identity_id(&id)?;
    let identity = state.authority.get_identity(&id).await?;
    let keys = all_keys(&state.authority, &id).await?;
    Ok(html(views::identity(&admin.viewer(), &identity, &keys)))
}

/// Every key of an identity (an identity has few), ordered by id.
async fn all_keys(
    authority: &Authority,
    id: &IdentityId,
) -> Result<Vec<crate::domain::ApiKey>, Error> {
    let query = crate::service::KeyQuery {
        identity_id: Some(id.clone()),
        ..Default::default()
    };
    authority.matching_keys(&query).await
}

pub(super) async fn edit_identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    Form(form): Form<RecordForm>,
) -> Reply {
    let id = identity_id(&id)?;
    let kind = state.authority.get_identity(&id).await?.kind;
    // A person keeps its SCIM userName's rule, and its lifetime is the
    // identity provider's: its form has no expiry, and none is changed.
    let (record, expire_time) = match kind {
        IdentityKind::Service => {
            let record = form.checked()?;
            let expire_time = Some(record.expire_time);
            (record, expire_time)
        }
        IdentityKind::Person => (form.checked_with(parse_person_name)?, None),
    };
    // The admin flag is not on the edit form: who is an admin changes
    // through the Admin API only.
    let changes = IdentityChanges {
        name: Some(record.name),
        description: Some(record.description),
        datasets: Some(record.datasets),
        allowed_cidrs: Some(record.allowed_cidrs),
        scopes: Some(record.scopes),
        admin: None,
        expire_time,
        labels: None,
        rate_limits: None,
    };
    let authority = &state.authority;
    admin
        .change(
            authority,
            "UpdateIdentity",
            Some(id.as_str()),
            authority.update_identity(&id, changes),
        )
        .await?;
    Ok(Redirect::to(&format!("/identities/{id}")).into_response())
}

pub(super) async fn delete_identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    let id = identity_id(&id)?;
    let authority = &state.authority;
    admin
        .change(
            authority,
            "DeleteIdentity",
            Some(id.as_str()),
            authority.delete_identity(&id),
        )
        .await?;
    Ok(Redirect::to("/identities").into_response())
}

async fn set_identity_state(
    state: &ConsoleState,
    admin: &Admin,
    id: &str,
    life: LifeState,
) -> Reply {
    let id = identity_id(id)?;
    let action = match life {
        LifeState::Active => "EnableIdentity",
        LifeState::Disabled => "DisableIdentity",
    };
    let authority = &state.authority;
    admin
        .change(
            authority,
            action,
            Some(id.as_str()),
            authority.set_identity_state(&id, life),
        )
        .await?;
    Ok(Redirect::to("/identities").into_response())
}

pub(super) async fn disable_identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    set_identity_state(&state, &admin, &id, LifeState::Disabled).await
}

pub(super) async fn enable_identity(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    set_identity_state(&state, &admin, &id, LifeState::Active).await
}

pub(super) async fn create_key(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    Form(form): Form<RecordForm>,
) -> Reply {
    let identity_id = identity_id(&id)?;
    let record = form.checked()?;
    let request = NewKey {
        identity_id: identity_id.clone(),
        name: record.name,
        description: record.description,
        expire_time: record.expire_time,
        allowed_cidrs: record.allowed_cidrs,
        scopes: record.scopes,
        datasets: record.datasets,
        labels: Default::default(),
        honeytoken: false,
        rate_limits: Vec::new(),
        credits: None,
    };
    let authority = &state.authority;
    let minted = admin
        .change(
            authority,
            "CreateKey",
            Some(identity_id.as_str()),
            authority.create_key(request),
        )
        .await?;
    show_minted(authority, &admin, "Key created", &minted).await
}

async fn set_key_state(state: &ConsoleState, admin: &Admin, id: &str, life: LifeState) -> Reply {
    let id = key_id(id)?;
    let action = match life {
        LifeState::Active => "EnableKey",
        LifeState::Disabled => "DisableKey",
    };
    let authority = &state.authority;
    admin
        .change(
            authority,
            action,
            Some(id.as_str()),
            authority.set_key_state(&id, life),
        )
        .await?;
    Ok(back_to_identity(&id.identity_id()))
}

pub(super) async fn disable_key(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    set_key_state(&state, &admin, &id, LifeState::Disabled).await
}

pub(super) async fn enable_key(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    set_key_state(&state, &admin, &id, LifeState::Active).await
}

pub(super) async fn revoke_key(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Reply {
    let id = key_id(&id)?;
    let authority = &state.authority;
    admin
        .change(
            authority,
            "RevokeKey",
            Some(id.as_str()),
            authority.revoke_key(&id),
        )
        .await?;
    Ok(back_to_identity(&id.identity_id()))
}

#[derive(Deserialize)]
pub(super) struct RollQuery {
    key: Option<String>,
}

pub(super) async fn roll_dialog(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    Query(query): Query<RollQuery>,
) -> Reply {
    let id = identity_id(&id)?;
    let identity = state.authority.get_identity(&id).await?;
    if identity.kind == IdentityKind::Person {
        return Err(Error::FailedPrecondition(views::PERSON_LIFECYCLE.to_owned()).into());
    }
    let keys = all_keys(&state.authority, &id).await?;
    Ok(html(views::roll(
        &admin.viewer(),
        &identity,
        &keys,
        query.key.as_deref(),
    )))
}

#[derive(Deserialize)]
pub(super) struct RollForm {
    key_id: String,
    old_key_end: String,
    #[serde(default)]
    grace_period: String,
    #[serde(default)]
    old_key_expire_time: String,
    #[serde(default)]
    totp_code: String,
}

pub(super) async fn roll(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
    Form(form): Form<RollForm>,
) -> Reply {
    let identity_id = identity_id(&id)?;
    let totp_code = SecretString::new(form.totp_code);
    let mut violations = Violations::new();
    let key = violations.check("key_id", KeyId::parse(&form.key_id));
    if key
        .as_ref()
        .is_some_and(|key| key.identity_id() != identity_id)
    {
        violations.add("key_id", format!("is not a key of identity {identity_id}"));
    }
    let old_key_end = match form.old_key_end.as_str() {
        "now" => Some(OldKeyEnd::Now),
        "grace" => match humantime::parse_duration(form.grace_period.trim()) {
            Ok(period) if period <= crate::service::MAX_GRACE_PERIOD => {
                Some(OldKeyEnd::After(period))
            }
            Ok(_) => {
                violations.add("grace_period", "is longer than a year");
                None
            }
            Err(_) => {
                violations.add("grace_period", "is not a duration such as 30m, 24h or 7d");
                None
            }
        },
        "date" => match check_time(
            &mut violations,
            "old_key_expire_time",
            &form.old_key_expire_time,
        ) {
            Some(at) => Some(OldKeyEnd::At(at)),
            None => {
                violations.add(
                    "old_key_expire_time",
                    "is required to stop the old key at a date",
                );
                None
            }
        },
        _ => {
            violations.add("old_key_end", "is now, grace or date");
            None
        }
    };
    if totp_code.expose().chars().count() > MAX_TOTP_CODE_CHARS {
        violations.add("totp_code", "is not a TOTP code");
    }
    violations.finish()?;
    let request = RollRequest {
        key_id: key.expect("checked above"),
        old_key_end: old_key_end.expect("checked above"),
        totp_code,
        new_key_expire_time: None,
    };
    let authority = &state.authority;
    let target = request.key_id.to_string();
    let rolled = admin
        .change(
            authority,
            "RollKey",
            Some(&target),
            authority.roll_key(&admin.caller, request),
        )
        .await?;
    show_minted(authority, &admin, "Key rolled", &rolled.minted).await
}

pub(super) async fn datasets(State(state): Shared, Extension(admin): Extension<Admin>) -> Reply {
    let datasets = dataset_suggestions(&state.authority).await?;
    Ok(html(views::datasets(&admin.viewer(), &datasets)))
}

#[derive(Deserialize)]
pub(super) struct DatasetForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    skip_key: Option<String>,
}

pub(super) async fn create_dataset(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Form(form): Form<DatasetForm>,
) -> Reply {
    let mut violations = Violations::new();
    let name = violations.check("name", DatasetName::parse(&form.name));
    let description = violations.check("description", parse_description(&form.description));
    violations.finish()?;
    let Some(name) = name else {
        return Err(Error::invalid("name", "is required").into());
    };
    let request = NewDataset {
        name,
        description: description.unwrap_or_default(),
        skip_key: form.skip_key.is_some(),
    };
    let authority = &state.authority;
    let created = admin
        .change(
            authority,
            "CreateDataset",
            None,
            authority.create_dataset(request),
        )
        .await?;
    match created.access {
        Some((_, minted)) => show_minted(authority, &admin, "Dataset created", &minted).await,
        None => Ok(Redirect::to("/datasets").into_response()),
    }
}

#[derive(Deserialize)]
pub(super) struct DeleteDatasetForm {
    #[serde(default)]
    force: Option<String>,
}

pub(super) async fn delete_dataset(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Path(name): Path<String>,
    Form(form): Form<DeleteDatasetForm>,
) -> Reply {
    let name = parse_name(&name).map_err(|why| Error::invalid("name", why.to_string()))?;
    let authority = &state.authority;
    admin
        .change(
            authority,
            "DeleteDataset",
            Some(&name),
            authority.delete_dataset(&name, form.force.is_some()),
        )
        .await?;
    Ok(Redirect::to("/datasets").into_response())
}

#[derive(Deserialize)]
pub(super) struct TotpQuery {
    confirmed: Option<String>,
}

pub(super) async fn totp(
    Extension(admin): Extension<Admin>,
    Query(query): Query<TotpQuery>,
) -> Reply {
    Ok(html(views::totp(
        &admin.viewer(),
        None,
        query.confirmed.is_some(),
    )))
}

/// The QR code of an `otpauth://` URL, as an SVG element.
fn qr_svg(url: &str) -> Result<String, Error> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| Error::Internal(format!("cannot encode the QR code: {e}")))?;
    let document = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .build();
    // Inline in HTML: the element without the XML declaration, labelled.
    let element = document
        .find("<svg")
        .map_or(document.as_str(), |start| &document[start..]);
    Ok(element.replacen(
        "<svg ",
        "<svg role=\"img\" aria-label=\"QR code of your authenticator seed\" ",
        1,
    ))
}

pub(super) async fn enroll_totp(State(state): Shared, Extension(admin): Extension<Admin>) -> Reply {
    let authority = &state.authority;
    let caller_id = admin.caller.identity.id.to_string();
    let enrollment = admin
        .change(
            authority,
            "EnrollTotp",
            Some(&caller_id),
            authority.enroll_totp(&admin.caller),
        )
        .await?;
    let svg = qr_svg(enrollment.otpauth_url.expose())?;
    Ok(html(views::totp(
        &admin.viewer(),
        Some((&svg, enrollment.secret.expose())),
        false,
    )))
}

#[derive(Deserialize)]
pub(super) struct ConfirmForm {
    code: String,
}

pub(super) async fn confirm_totp(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Form(form): Form<ConfirmForm>,
) -> Reply {
    let code = SecretString::new(form.code.trim().to_owned());
    if code.expose().chars().count() > MAX_TOTP_CODE_CHARS {
        return Err(Error::invalid("code", "is not a TOTP code").into());
    }
    let authority = &state.authority;
    let caller_id = admin.caller.identity.id.to_string();
    admin
        .change(
            authority,
            "ConfirmTotp",
            Some(&caller_id),
            authority.confirm_totp(&admin.caller, code.expose()),
        )
        .await?;
    Ok(Redirect::to("/totp?confirmed=1").into_response())
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    actor: String,
    page_token: Option<String>,
}

pub(super) async fn audit(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Query(query): Query<AuditQuery>,
) -> Reply {
    let filter = AuditFilter {
        target_id: optional(&query.target),
        actor_identity_id: optional(&query.actor),
        action: optional(&query.action),
    };
    let page = state
        .authority
        .list_audit_events(&filter, &page_request(query.page_token))
        .await?;
    let filters = AuditFilters {
        action: query.action,
        target: query.target,
        actor: query.actor,
    };
    Ok(html(views::audit(
        &admin.viewer(),
        &filters,
        &page.items,
        page.next_page_token,
    )))
}

#[derive(Deserialize, Default)]
pub(super) struct KeyFilterForm {
    #[serde(default)]
    state: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    in_grace: String,
    page_token: Option<String>,
    #[serde(default)]
    totp_code: String,
}

impl KeyFilterForm {
    /// The domain filter the form names, every bad field reported at once.
    fn filter(&self) -> Result<crate::domain::key::KeyFilter, Error> {
        let mut violations = Violations::new();
        let state = check_state(&mut violations, &self.state);
        let origin = match self.origin.as_str() {
            "" => None,
            name => {
                let known = views::ORIGINS.iter().find(|(_, known)| *known == name);
                if known.is_none() {
                    violations.add("origin", "is not a key origin");
                }
                known.map(|(origin, _)| *origin)
            }
        };
        let in_grace = match self.in_grace.as_str() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            _ => {
                violations.add("in_grace", "is yes or no");
                None
            }
        };
        violations.finish()?;
        Ok(crate::domain::key::KeyFilter {
            state,
            origin,
            in_grace,
            ..Default::default()
        })
    }

    fn shown(&self) -> views::KeyFilters {
        views::KeyFilters {
            state: self.state.clone(),
            origin: self.origin.clone(),
            in_grace: self.in_grace.clone(),
        }
    }
}

pub(super) async fn keys(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Query(form): Query<KeyFilterForm>,
) -> Reply {
    let query = crate::service::KeyQuery {
        filter: form.filter()?,
        ..Default::default()
    };
    let page = state
        .authority
        .list_keys_page(&query, &page_request(form.page_token.clone()))
        .await?;
    Ok(html(views::keys(
        &admin.viewer(),
        &form.shown(),
        &page.items,
        page.total_size,
        page.next_page_token,
    )))
}

/// A batch revoke without any filter would take every key of the
/// authority, the admins' own included: the console asks for one.
fn require_some_filter(filter: &crate::domain::key::KeyFilter) -> Result<(), Error> {
    if *filter == crate::domain::key::KeyFilter::default() {
        return Err(Error::invalid(
            "filter",
            "choose at least one filter before revoking in bulk",
        ));
    }
    Ok(())
}

pub(super) async fn batch_revoke_preview(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Query(form): Query<KeyFilterForm>,
) -> Reply {
    let filter = form.filter()?;
    require_some_filter(&filter)?;
    let (keys, _) = state
        .authority
        .batch_revoke_keys(
            &admin.caller,
            filter,
            true,
            &SecretString::new(String::new()),
        )
        .await?;
    Ok(html(views::batch_revoke(
        &admin.viewer(),
        &form.shown(),
        &keys,
    )))
}

pub(super) async fn batch_revoke(
    State(state): Shared,
    Extension(admin): Extension<Admin>,
    Form(form): Form<KeyFilterForm>,
) -> Reply {
    let filter = form.filter()?;
    require_some_filter(&filter)?;
    if form.totp_code.chars().count() > MAX_TOTP_CODE_CHARS {
        return Err(Error::invalid("totp_code", "is not a TOTP code").into());
    }
    let totp_code = SecretString::new(form.totp_code.clone());
    let authority = &state.authority;
    let (_, revoked) = admin
        .change(
            authority,
            "BatchRevokeKeys",
            None,
            authority.batch_revoke_keys(&admin.caller, filter, false, &totp_code),
        )
        .await?;
    Ok(html(views::batch_revoked(&admin.viewer(), revoked)))
}
