//! The console's pages, rendered on the server with maud (every value is
//! HTML-escaped unless wrapped in `PreEscaped`). No page needs JavaScript:
//! the one script served, `copy.js`, only adds the Copy button's action.
//! No element carries a `style` attribute, so the CSP needs no
//! `unsafe-inline`.

use crate::domain::key::Origin;
use crate::domain::{ApiKey, AuditEvent, Dataset, Identity, IdentityKind, State, UnixMillis};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::time::{Duration, SystemTime};

/// Why a person's Roll and Disable are missing (Lifecycle rule 7).
pub const PERSON_LIFECYCLE: &str =
    "People are provisioned by the identity provider (SCIM): disable, enable or roll them there.";

/// Which panel a page belongs to, for the navigation's current marker.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    Identities,
    Keys,
    Datasets,
    Totp,
    Audit,
    None,
}

/// Who is looking at a page: the admin's name and the form token every
/// changing form carries.
pub struct Viewer<'a> {
    pub name: &'a str,
    pub csrf: &'a str,
}

/// An RFC 3339 time, to the second, in UTC.
pub fn time(at: UnixMillis) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at.0).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn optional_time(at: Option<UnixMillis>) -> String {
    at.map(time).unwrap_or_else(|| "never".to_owned())
}

/// The value a `datetime-local` input shows for `at` (UTC, to the minute).
fn datetime_value(at: Option<UnixMillis>) -> String {
    at.map(|at| time(at).chars().take(16).collect())
        .unwrap_or_default()
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Active => "active",
        State::Disabled => "disabled",
    }
}

fn kind_name(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Service => "service",
        IdentityKind::Person => "person",
    }
}

/// The page shell: navigation, sign-out, and `body` in `main`.
pub fn page(title: &str, panel: Panel, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Panel| {
        html! {
            a href=(href) aria-current=[(panel == this).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyrack console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/copy.js" defer {}
            }
            body {
                header.top {
                    span.brand { "keyrack" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Panels" {
                            (link("/identities", "Identities", Panel::Identities))
                            (link("/keys", "API Keys", Panel::Keys))
                            (link("/datasets", "Datasets", Panel::Datasets))
                            (link("/totp", "TOTP", Panel::Totp))
                            (link("/audit", "Audit log", Panel::Audit))
                        }
                        form.sign-out method="post" action="/sign-out" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            span.who { "Signed in as " strong { (viewer.name) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A hidden field with the session's form token.
fn csrf(viewer: &Viewer<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A one-button form that POSTs to `action`.
fn action_button(viewer: &Viewer<'_>, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(viewer))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A row action that does not apply, with the reason as its tooltip.
fn unavailable(label: &str, why: &str) -> Markup {
    html! {
        span.unavailable title=(why) tabindex="0" aria-disabled="true" {
            (label) span.visually-hidden { " (" (why) ")" }
        }
    }
}

/// Disable or Enable (a POST to `base` + `/disable` or `/enable`) and Roll
/// (a link to `roll`, when the record can be rolled); for a person, both are
/// shown unavailable with the reason.
fn lifecycle_actions(
    viewer: &Viewer<'_>,
    person: bool,
    state: State,
    base: &str,
    roll: Option<String>,
) -> Markup {
    let (label, change) = match state {
        State::Active => ("Disable", "disable"),
        State::Disabled => ("Enable", "enable"),
    };
    html! {
        @if person {
            (unavailable(label, PERSON_LIFECYCLE))
            (unavailable("Roll", PERSON_LIFECYCLE))
        } @else {
            (action_button(viewer, &format!("{base}/{change}"), label, ""))
            @if let Some(roll) = roll { a href=(roll) { "Roll" } }
        }
    }
}

/// The `state` filter's select, showing `current`.
fn state_select(current: &str) -> Markup {
    html! {
        label { "State " select name="state" {
            @for (value, label) in [("", "any"), ("active", "active"), ("disabled", "disabled")] {
                option value=(value) selected[value == current] { (label) }
            }
        } }
    }
}

/// A server or person icon (inline SVG, no styles), labelled for readers.
fn kind_icon(kind: IdentityKind) -> Markup {
    let (label, path) = match kind {
        IdentityKind::Service => (
            "service",
            "M3 3h18v6H3zM3 13h18v6H3zM6 5.5h2v1H6zM6 15.5h2v1H6z",
        ),
        IdentityKind::Person => (
            "person",
            "M12 12a4.5 4.5 0 1 0 0-9 4.5 4.5 0 0 0 0 9zM3 21c0-4.5 4-7 9-7s9 2.5 9 7z",
        ),
    };
    html! {
        svg.icon viewBox="0 0 24 24" width="20" height="20" role="img" aria-label=(label) {
            title { (label) }
            path d=(path) fill="currentColor" {}
        }
    }
}

/// Problems with the last request, shown above the form it came from.
pub fn problems(message: &str, fields: &[(String, String)]) -> Markup {
    html! {
        div.error role="alert" {
            p { (message) }
            @if !fields.is_empty() {
                ul { @for (field, why) in fields { li { code { (field) } ": " (why) } } }
            }
        }
    }
}

/// The sign-in panel.
pub fn sign_in(problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        Panel::None,
        None,
        html! {
            @if let Some(problem) = problem { (problems(problem, &[])) }
            form.card method="post" action="/sign-in" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" required autocomplete="off" autofocus;
                p.hint { "The token of an admin identity, e.g. from " code { "keyrack bootstrap-admin" } ". It becomes a session; the token itself is not kept." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// What an identity listing is filtered by, as the form shows it.
#[derive(Default)]
pub struct IdentityFilters {
    pub kind: String,
    pub state: String,
    pub dataset: String,
}

/// The Identities panel.
pub fn identities(
    viewer: &Viewer<'_>,
    filters: &IdentityFilters,
    items: &[Identity],
    next_page: Option<String>,
    datasets: &[Dataset],
) -> Markup {
    let option = |value: &str, label: &str, current: &str| {
        html! { option value=(value) selected[value == current] { (label) } }
    };
    page(
        "Identities",
        Panel::Identities,
        Some(viewer),
        html! {
            form.filters method="get" action="/identities" {
                label { "Kind " select name="kind" {
                    (option("", "any", &filters.kind))
                    (option("service", "service", &filters.kind))
                    (option("person", "person", &filters.kind))
                } }
                (state_select(&filters.state))
                label { "Dataset " input type="text" name="dataset" list="dataset-names" value=(filters.dataset); }
                datalist #dataset-names { @for dataset in datasets { option value=(dataset.name) {} } }
                button type="submit" { "Filter" }
            }
            table {
                thead { tr { th { "" } th { "Name" } th { "State" } th { "Datasets" } th { "Scopes" } th { "Admin" } th { "Actions" } } }
                tbody {
                    @for identity in items {
                        @let id = identity.id.as_str();
                        @let person = identity.kind == IdentityKind::Person;
                        tr data-identity=(identity.name) {
                            td { (kind_icon(identity.kind)) }
                            td { a href={ "/identities/" (id) } { (identity.name) } br; small { (id) } }
                            td { (state_name(identity.state)) }
                            td { (identity.datasets.join(", ")) }
                            td { (identity.scopes.join(", ")) }
                            td { @if identity.admin { "yes" } @else { "no" } }
                            td.actions {
                                a href={ "/identities/" (id) "#edit" } { "Edit" }
                                (action_button(viewer, &format!("/identities/{id}/delete"), "Delete", "danger"))
                                (lifecycle_actions(viewer, person, identity.state, &format!("/identities/{id}"), Some(format!("/identities/{id}/roll"))))
                            }
                        }
                    }
                }
            }
            @if items.is_empty() { p { "No identity matches." } }
            @if let Some(next) = next_page {
                a.next href={ "/identities?kind=" (filters.kind) "&state=" (filters.state) "&dataset=" (filters.dataset) "&page_token=" (next) } { "Next page" }
            }
            section {
                h2 { "Create a service identity" }
                form.card method="post" action="/identities" {
                    (csrf(viewer))
                    label for="new-name" { "Name" }
                    input #new-name type="text" name="name" required pattern="[A-Za-z0-9_]{1,30}";
                    label for="new-description" { "Description" }
                    input #new-description type="text" name="description" maxlength="256";
                    (list_fields("new", "", "", ""))
                    label for="new-expire" { "Expires (UTC, optional)" }
                    input #new-expire type="datetime-local" name="expire_time";
                    label.check { input type="checkbox" name="admin" value="true"; " Admin (may use the Admin API and this console)" }
                    button type="submit" { "Create identity and its first key" }
                }
            }
        },
    )
}

/// Datasets, scopes and CIDRs inputs, each a comma- or space-separated list.
fn list_fields(prefix: &str, datasets: &str, scopes: &str, cidrs: &str) -> Markup {
    html! {
        label for={ (prefix) "-datasets" } { "Datasets" }
        input id={ (prefix) "-datasets" } type="text" name="datasets" value=(datasets) list="dataset-names" aria-describedby={ (prefix) "-lists-hint" };
        label for={ (prefix) "-scopes" } { "Scopes" }
        input id={ (prefix) "-scopes" } type="text" name="scopes" value=(scopes) aria-describedby={ (prefix) "-lists-hint" };
        label for={ (prefix) "-cidrs" } { "Allowed CIDRs" }
        input id={ (prefix) "-cidrs" } type="text" name="allowed_cidrs" value=(cidrs) aria-describedby={ (prefix) "-lists-hint" };
        p.hint id={ (prefix) "-lists-hint" } { "Separate entries with commas or spaces; empty means no restriction." }
    }
}

fn nets(list: &[ipnet::IpNet]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An identity with its keys, the edit form and the create-key form.
pub fn identity(viewer: &Viewer<'_>, identity: &Identity, keys: &[ApiKey]) -> Markup {
    let id = identity.id.as_str();
    let person = identity.kind == IdentityKind::Person;
    page(
        &identity.name,
        Panel::Identities,
        Some(viewer),
        html! {
            dl.facts {
                dt { "Kind" } dd { (kind_icon(identity.kind)) " " (kind_name(identity.kind)) }
                dt { "Id" } dd { code { (id) } }
                dt { "State" } dd { (state_name(identity.state)) }
                dt { "Admin" } dd { @if identity.admin { "yes" } @else { "no" } }
                dt { "Created" } dd { (time(identity.create_time)) }
                dt { "Expires" } dd { (optional_time(identity.expire_time)) }
            }
            @if person { p.hint { (PERSON_LIFECYCLE) } }
            h2 #keys { "Keys" }
            table {
                thead { tr { th { "Name" } th { "Id" } th { "State" } th { "Expires" } th { "Last used" } th { "Scopes" } th { "Datasets" } th { "CIDRs" } th { "Actions" } } }
                tbody {
                    @for key in keys {
                        @let key_id = key.id.as_str();
                        tr data-key=(key.name) {
                            td { (key.name) @if !key.description.is_empty() { br; small { (key.description) } } }
                            td { code { (key_id) } br; small { (key.token_hint) } }
                            td {
                                (state_name(key.state))
                                @if let Some(successor) = &key.rolled_to { br; small { "rolled to " (successor.as_str()) "; stops " (optional_time(key.grace_expire_time)) } }
                            }
                            td { (optional_time(key.expire_time)) }
                            td { (optional_time(key.last_use_time)) }
                            td { (key.scopes.join(", ")) }
                            td { (key.datasets.join(", ")) }
                            td { (nets(&key.allowed_cidrs)) }
                            td.actions {
                                (lifecycle_actions(
                                    viewer,
                                    person,
                                    key.state,
                                    &format!("/keys/{key_id}"),
                                    key.rolled_to.is_none().then(|| format!("/identities/{id}/roll?key={key_id}")),
                                ))
                                (action_button(viewer, &format!("/keys/{key_id}/revoke"), "Revoke", "danger"))
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Create a key" }
                form.card method="post" action={ "/identities/" (id) "/keys" } {
                    (csrf(viewer))
                    label for="key-name" { "Name" }
                    input #key-name type="text" name="name" required pattern="[A-Za-z0-9_]{1,30}";
                    label for="key-description" { "Description" }
                    input #key-description type="text" name="description" maxlength="256";
                    label for="key-expire" { "Expires (UTC, optional)" }
                    input #key-expire type="datetime-local" name="expire_time";
                    (list_fields("key", "", "", ""))
                    p.hint { "A key's datasets and scopes narrow its identity's: each must be one the identity holds." }
                    button type="submit" { "Create key" }
                }
            }
            section {
                h2 #edit { "Edit" }
                form.card method="post" action={ "/identities/" (id) "/edit" } {
                    (csrf(viewer))
                    label for="edit-name" { "Name" }
                    input #edit-name type="text" name="name" value=(identity.name) required;
                    label for="edit-description" { "Description" }
                    input #edit-description type="text" name="description" value=(identity.description) maxlength="256";
                    (list_fields("edit", &identity.datasets.join(", "), &identity.scopes.join(", "), &nets(&identity.allowed_cidrs)))
                    @if identity.kind == IdentityKind::Service {
                        label for="edit-expire" { "Expires (UTC, empty for never)" }
                        input #edit-expire type="datetime-local" name="expire_time" value=(datetime_value(identity.expire_time));
                    }
                    button type="submit" { "Save" }
                }
            }
        },
    )
}

/// The Roll dialog for one of an identity's keys.
pub fn roll(
    viewer: &Viewer<'_>,
    identity: &Identity,
    keys: &[ApiKey],
    chosen: Option<&str>,
) -> Markup {
    let id = identity.id.as_str();
    page(
        &format!("Roll a key of {}", identity.name),
        Panel::Identities,
        Some(viewer),
        html! {
            form.card method="post" action={ "/identities/" (id) "/roll" } {
                (csrf(viewer))
                label for="roll-key" { "Key" }
                select #roll-key name="key_id" required {
                    @for key in keys.iter().filter(|key| key.rolled_to.is_none()) {
                        option value=(key.id.as_str()) selected[chosen == Some(key.id.as_str())] { (key.name) " (" (key.id.as_str()) ")" }
                    }
                }
                fieldset {
                    legend { "When the old key stops" }
                    label.check { input type="radio" name="old_key_end" value="now" checked; " Now: block it at once" }
                    label.check { input type="radio" name="old_key_end" value="grace"; " After a grace period of " }
                    input type="text" name="grace_period" value="24h" aria-label="Grace period, e.g. 30m, 24h, 7d";
                    label.check { input type="radio" name="old_key_end" value="date"; " At a date (UTC) " }
                    input type="datetime-local" name="old_key_expire_time" aria-label="Date the old key stops (UTC)";
                }
                label for="roll-totp" { "TOTP code" }
                input #roll-totp type="text" name="totp_code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required;
                p.hint { "The current code from your authenticator (enroll one under TOTP)." }
                button type="submit" { "Roll" }
            }
        },
    )
}

/// A freshly minted token, shown this once.
pub fn minted(
    viewer: &Viewer<'_>,
    title: &str,
    identity: &Identity,
    key_id: &str,
    token: &str,
) -> Markup {
    page(
        title,
        Panel::Identities,
        Some(viewer),
        html! {
            div.warning role="alert" {
                strong { "Copy this token now: it will not be shown again." }
                " keyrack keeps only a hash of it."
            }
            label for="minted-token" { "Token for key " code { (key_id) } " of " (identity.name) }
            div.copy-row {
                input #minted-token type="text" readonly value=(token) spellcheck="false";
                button.copy type="button" data-copy="minted-token" { "Copy" }
            }
            p { a href={ "/identities/" (identity.id.as_str()) } { "Go to " (identity.name) } }
        },
    )
}

/// The Datasets panel with the creation wizard.
pub fn datasets(viewer: &Viewer<'_>, items: &[Dataset]) -> Markup {
    page(
        "Datasets",
        Panel::Datasets,
        Some(viewer),
        html! {
            table {
                thead { tr { th { "Name" } th { "Description" } th { "Created" } th { "Actions" } } }
                tbody {
                    @for dataset in items {
                        tr data-dataset=(dataset.name) {
                            td { a href={ "/identities?dataset=" (dataset.name) } { (dataset.name) } }
                            td { (dataset.description) }
                            td { (time(dataset.create_time)) }
                            td.actions {
                                form.inline method="post" action={ "/datasets/" (dataset.name) "/delete" } {
                                    (csrf(viewer))
                                    label.check { input type="checkbox" name="force" value="true"; " detach from identities" }
                                    button.danger type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
            @if items.is_empty() { p { "No datasets yet." } }
            section {
                h2 { "New dataset" }
                form.card method="post" action="/datasets" {
                    (csrf(viewer))
                    label for="dataset-name" { "Name" }
                    input #dataset-name type="text" name="name" required pattern="[A-Za-z0-9_]{1,30}";
                    label for="dataset-description" { "Description" }
                    input #dataset-description type="text" name="description" maxlength="256";
                    label.check { input type="checkbox" name="skip_key" value="true"; " Dataset only (no service identity and key)" }
                    p.hint { "Unless you tick that, keyrack also creates a service identity of the same name with access to the dataset, and its first key." }
                    button type="submit" { "Create" }
                }
            }
        },
    )
}

/// The TOTP panel: enrollment, then the QR code and confirmation.
pub fn totp(viewer: &Viewer<'_>, enrollment: Option<(&str, &str)>, confirmed: bool) -> Markup {
    page(
        "TOTP",
        Panel::Totp,
        Some(viewer),
        html! {
            @if confirmed {
                p.notice role="status" { "Your authenticator is confirmed: Roll now takes its codes." }
            }
            @if let Some((qr_svg, secret)) = enrollment {
                div.warning role="alert" { strong { "Scan this now: the seed will not be shown again." } }
                figure.qr { (PreEscaped(qr_svg)) figcaption { "Scan with an authenticator app" } }
                label for="totp-secret" { "Or enter the seed by hand" }
                div.copy-row {
                    input #totp-secret type="text" readonly value=(secret) spellcheck="false";
                    button.copy type="button" data-copy="totp-secret" { "Copy" }
                }
                form.card method="post" action="/totp/confirm" {
                    (csrf(viewer))
                    label for="confirm-code" { "Current code" }
                    input #confirm-code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required;
                    button type="submit" { "Confirm" }
                }
            } @else {
                p { "Roll asks for a code from your authenticator (RFC 6238, 6 digits, 30 s). Enroll one here; while it is unconfirmed you may enroll again." }
                form.card method="post" action="/totp/enroll" {
                    (csrf(viewer))
                    button type="submit" { "Enroll an authenticator" }
                }
            }
        },
    )
}

/// What an audit listing is filtered by, as the form shows it.
#[derive(Default)]
pub struct AuditFilters {
    pub action: String,
    pub target: String,
    pub actor: String,
}

/// The audit log, newest first.
pub fn audit(
    viewer: &Viewer<'_>,
    filters: &AuditFilters,
    events: &[AuditEvent],
    next_page: Option<String>,
) -> Markup {
    page(
        "Audit log",
        Panel::Audit,
        Some(viewer),
        html! {
            form.filters method="get" action="/audit" {
                label { "Action " input type="text" name="action" value=(filters.action) placeholder="e.g. RevokeKey"; }
                label { "Target id " input type="text" name="target" value=(filters.target); }
                label { "Actor id " input type="text" name="actor" value=(filters.actor); }
                button type="submit" { "Filter" }
            }
            table {
                thead { tr { th { "Time" } th { "Action" } th { "Outcome" } th { "Actor" } th { "Targets" } th { "Address" } th { "Request" } } }
                tbody {
                    @for event in events {
                        tr data-action=(event.action) {
                            td { (time(event.time)) }
                            td { (event.action) }
                            td { (event.outcome) }
                            td { code { (event.actor_identity_id.as_deref().unwrap_or("")) } }
                            td { @for target in &event.target_ids { code { (target) } " " } }
                            td { (event.caller_address.as_deref().unwrap_or("")) }
                            td { small { (event.request_id) } }
                        }
                    }
                }
            }
            @if events.is_empty() { p { "No event matches." } }
            @if let Some(next) = next_page {
                a.next href={ "/audit?action=" (filters.action) "&target=" (filters.target) "&actor=" (filters.actor) "&page_token=" (next) } { "Older events" }
            }
        },
    )
}

/// A page for a refused or failed request.
pub fn failure(
    viewer: Option<&Viewer<'_>>,
    title: &str,
    message: &str,
    fields: &[(String, String)],
) -> Markup {
    page(
        title,
        Panel::None,
        viewer,
        html! {
            (problems(message, fields))
            p { a href="/identities" { "Back to the console" } }
        },
    )
}

/// Every key origin, as the filter names it.
pub const ORIGINS: [(Origin, &str); 5] = [
    (Origin::CreateIdentity, "create_identity"),
    (Origin::CreateKey, "create_key"),
    (Origin::Dataset, "dataset"),
    (Origin::Roll, "roll"),
    (Origin::Import, "import"),
];

fn origin_name(origin: Option<Origin>) -> &'static str {
    ORIGINS
        .iter()
        .find(|(known, _)| Some(*known) == origin)
        .map_or("unknown", |(_, name)| name)
}

/// What a key listing is filtered by, as the form shows it.
#[derive(Default)]
pub struct KeyFilters {
    pub state: String,
    pub origin: String,
    pub in_grace: String,
}

impl KeyFilters {
    /// The filters as a query string.
    pub fn query(&self) -> String {
        format!(
            "state={}&origin={}&in_grace={}",
            self.state, self.origin, self.in_grace
        )
    }
}

fn keys_table(keys: &[ApiKey]) -> Markup {
    html! {
        table {
            thead { tr { th { "Identity" } th { "Key" } th { "Origin" } th { "State" } th { "Expires" } th { "Last used" } th { "Grace until" } } }
            tbody {
                @for key in keys {
                    tr data-key-id=(key.id.as_str()) {
                        td { a href={ "/identities/" (key.identity_id.as_str()) "#keys" } { code { (key.identity_id.as_str()) } } }
                        td { (key.name) br; small { (key.id.as_str()) } }
                        td { (origin_name(key.origin)) }
                        td { (state_name(key.state)) }
                        td { (optional_time(key.expire_time)) }
                        td { (optional_time(key.last_use_time)) }
                        td { @if key.rolled_to.is_some() { (optional_time(key.grace_expire_time)) } }
                    }
                }
            }
        }
    }
}

/// The API Keys panel: every key of the authority, filtered.
pub fn keys(
    viewer: &Viewer<'_>,
    filters: &KeyFilters,
    keys: &[ApiKey],
    total: usize,
    next_page: Option<String>,
) -> Markup {
    let option = |value: &str, label: &str, current: &str| {
        html! { option value=(value) selected[value == current] { (label) } }
    };
    page(
        "API Keys",
        Panel::Keys,
        Some(viewer),
        html! {
            form.filters method="get" action="/keys" {
                (state_select(&filters.state))
                label { "Origin " select name="origin" {
                    (option("", "any", &filters.origin))
                    @for (_, name) in ORIGINS { (option(name, name, &filters.origin)) }
                } }
                label { "In grace " select name="in_grace" {
                    (option("", "any", &filters.in_grace))
                    (option("yes", "yes", &filters.in_grace))
                    (option("no", "no", &filters.in_grace))
                } }
                button type="submit" { "Filter" }
                a href={ "/keys/batch-revoke?" (filters.query()) } { "Revoke all matching…" }
            }
            p { (total) " keys match." }
            (keys_table(keys))
            @if let Some(next) = next_page {
                a.next href={ "/keys?" (filters.query()) "&page_token=" (next) } { "Next page" }
            }
        },
    )
}

/// The batch revoke's preview: exactly what the revoke would remove.
pub fn batch_revoke(viewer: &Viewer<'_>, filters: &KeyFilters, keys: &[ApiKey]) -> Markup {
    page(
        "Revoke keys",
        Panel::Keys,
        Some(viewer),
        html! {
            div.warning role="alert" {
                strong { "These " (keys.len()) " keys will be removed for good." }
                " Services using them will be refused at once."
            }
            (keys_table(keys))
            @if !keys.is_empty() {
                form.card method="post" action="/keys/batch-revoke" {
                    (csrf(viewer))
                    input type="hidden" name="state" value=(filters.state);
                    input type="hidden" name="origin" value=(filters.origin);
                    input type="hidden" name="in_grace" value=(filters.in_grace);
                    label for="batch-totp" { "TOTP code" }
                    input #batch-totp type="text" name="totp_code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required;
                    button.danger type="submit" { "Revoke " (keys.len()) " keys" }
                }
            }
            p { a href={ "/keys?" (filters.query()) } { "Back to the keys" } }
        },
    )
}

/// What a batch revoke did.
pub fn batch_revoked(viewer: &Viewer<'_>, revoked: usize) -> Markup {
    page(
        "Keys revoked",
        Panel::Keys,
        Some(viewer),
        html! {
            p.notice role="status" { "Revoked " (revoked) " keys; each has its RevokeKey event in the audit log." }
            p { a href="/keys" { "Back to the keys" } }
        },
    )
}
