//! The admin web console (`--console-listen`): server-rendered pages over
//! axum, in the same process and runtime as gRPC and SCIM. It calls the
//! service layer (`Authority`) as the Admin API does, and every change it
//! makes is audited the same way, under the same action names.
//!
//! - Sign-in exchanges an admin token for a session kept in the store
//!   (`service::sessions`); the cookie is `HttpOnly`, `SameSite=Strict`, and
//!   `Secure` under TLS.
//! - Every POST but sign-in carries the session's form token (`csrf`),
//!   checked here before any handler runs.
//! - Every response carries a strict Content-Security-Policy: scripts and
//!   styles from this origin only, nothing inline.

mod panels;
mod views;

use crate::domain::{Error, SecretString};
use crate::scim::listener::{self, Peer};
use crate::service::{Authority, Caller, audit, sessions};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keyrack_session";
/// The Content-Security-Policy of every response: no inline script or style.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Largest form accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// How the console runs.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
    /// Serve TLS with this configuration (and mark cookies `Secure`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct ConsoleState {
    authority: Arc<Authority>,
    options: ConsoleOptions,
}

type Shared = State<Arc<ConsoleState>>;

/// The signed-in admin of a request, put there by [`require_session`].
#[derive(Clone)]
struct Admin {
    caller: Caller,
    cookie: Arc<SecretString>,
    csrf: String,
    address: Option<SocketAddr>,
    request_id: String,
}

impl Admin {
    fn viewer(&self) -> views::Viewer<'_> {
        views::Viewer {
            name: &self.caller.identity.name,
            csrf: &self.csrf,
        }
    }

    /// Runs `work` as one audited operation named `action` about `target`,
    /// exactly as the Admin API audits its calls.
    async fn change<T>(
        &self,
        authority: &Authority,
        action: &str,
        target: Option<&str>,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let event = audit::event(
            action,
            Some(&self.caller),
            self.address,
            self.request_id.clone(),
        );
        let target = target.map(str::to_owned);
        let work = async move {
            if let Some(target) = target {
                audit::target(target);
            }
            work.await
        };
        authority
            .audited(event, work, |error: &Error| error.code_name().to_owned())
            .await
    }
}

/// The console's routes, for `serve` and for in-process callers.
pub fn router(authority: Arc<Authority>, options: ConsoleOptions) -> Router {
    let state = Arc::new(ConsoleState { authority, options });
    let signed_in = Router::new()
        .route("/", get(|| async { Redirect::to("/identities") }))
        .route(
            "/identities",
            get(panels::identities).post(panels::create_identity),
        )
        .route("/identities/{id}", get(panels::identity))
        .route("/identities/{id}/edit", post(panels::edit_identity))
        .route("/identities/{id}/delete", post(panels::delete_identity))
        .route("/identities/{id}/disable", post(panels::disable_identity))
        .route("/identities/{id}/enable", post(panels::enable_identity))
        .route("/identities/{id}/keys", post(panels::create_key))
        .route(
            "/identities/{id}/roll",
            get(panels::roll_dialog).post(panels::roll),
        )
        .route("/keys", get(panels::keys))
        .route(
            "/keys/batch-revoke",
            get(panels::batch_revoke_preview).post(panels::batch_revoke),
        )
        .route("/keys/{id}/disable", post(panels::disable_key))
        .route("/keys/{id}/enable", post(panels::enable_key))
        .route("/keys/{id}/revoke", post(panels::revoke_key))
        .route(
            "/datasets",
            get(panels::datasets).post(panels::create_dataset),
        )
        .route("/datasets/{name}/delete", post(panels::delete_dataset))
        .route("/totp", get(panels::totp))
        .route("/totp/enroll", post(panels::enroll_totp))
        .route("/totp/confirm", post(panels::confirm_totp))
        .route("/audit", get(panels::audit))
        .route("/sign-out", post(panels::sign_out))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/sign-in", get(panels::sign_in_page).post(panels::sign_in))
        .route("/static/console.css", get(stylesheet))
        .route("/static/copy.js", get(copy_script))
        .merge(signed_in)
        .fallback(|| async { Failure::status(StatusCode::NOT_FOUND, "There is no such page.") })
        .layer(middleware::from_fn_with_state(state.clone(), harden))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

/// Serves the console on `listener` until `shutdown` completes, then lets
/// requests in flight finish (each is bounded by the request timeout).
pub async fn serve(
    listener: TcpListener,
    authority: Arc<Authority>,
    options: ConsoleOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = options.tls.clone();
    listener::serve(listener, router(authority, options), tls, shutdown).await
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn copy_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/copy.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Whether a browser sent this request from another site: its `Origin`
/// names another host than the one it addressed. (Clients that send no
/// `Origin` are not browsers acting for a page; the session's form token
/// still guards their changes.) This is what stops a foreign page from
/// signing a browser in to the attacker's own session.
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    origin_host.is_none() || origin_host != host
}

/// Bounds every request's duration, refuses cross-site changes, and puts the
/// security headers on every response; pages are never cached (some show a
/// token once).
async fn harden(State(state): Shared, request: Request, next: Next) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let refused = changes && cross_site(request.headers());
    let work = async {
        if refused {
            return Failure::status(
                StatusCode::FORBIDDEN,
                "This form was sent from another site.",
            )
            .into_response();
        }
        next.run(request).await
    };
    let mut response = match tokio::time::timeout(state.options.request_timeout, work).await {
        Ok(response) => response,
        Err(_) => Failure::status(StatusCode::SERVICE_UNAVAILABLE, "The request timed out.")
            .into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        // Not no-referrer: under it browsers send `Origin: null` on the
        // console's own form posts, which the cross-site check refuses.
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if state.options.tls.is_some() {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// The session cookie's value, when the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that stores `value` for `max_age`; an empty value
/// with no age clears the cookie.
fn set_cookie(value: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        max_age.as_secs()
    ))
    .expect("cookie values are base64url")
}

fn to_sign_in(clear_cookie: bool, secure: bool) -> Response {
    let mut response = Redirect::to("/sign-in").into_response();
    if clear_cookie {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, set_cookie("", Duration::ZERO, secure));
    }
    response
}

/// Admits requests of a live session only, and changes only with the
/// session's form token: a request without both never reaches a handler.
async fn require_session(State(state): Shared, request: Request, next: Next) -> Response {
    let secure = state.options.tls.is_some();
    let Some(cookie) = session_cookie(request.headers()) else {
        return to_sign_in(false, secure);
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|info| info.0);
    let caller = match state
        .authority
        .console_caller(&cookie, address.map(|address| address.ip()))
        .await
    {
        Ok(caller) => caller,
        Err(Error::Unauthenticated(_)) => return to_sign_in(true, secure),
        Err(error) => return Failure::from(error).into_response(),
    };
    let request_id = audit::request_id(
        request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok()),
    );
    let (parts, body) = request.into_parts();
    let body = if parts.method == Method::GET || parts.method == Method::HEAD {
        body
    } else {
        let Ok(form) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return Failure::status(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.")
                .into_response();
        };
        let given = form_urlencoded::parse(&form)
            .find(|(name, _)| name == "csrf")
            .map(|(_, value)| value.into_owned());
        if !given.is_some_and(|given| sessions::csrf_matches(&cookie, &given)) {
            tracing::info!(actor = %caller.identity.id, path = %parts.uri.path(), "console change refused: missing or wrong CSRF token");
            return Failure::status(
                StatusCode::FORBIDDEN,
                "This form was not sent by your console session (its CSRF token is missing or wrong). Reload the page and try again.",
            )
            .into_response();
        }
        Body::from(form)
    };
    let mut request = Request::from_parts(parts, body);
    tracing::debug!(actor = %caller.identity.id, method = %request.method(), path = %request.uri().path(), "console request");
    request.extensions_mut().insert(Admin {
        caller,
        csrf: sessions::csrf_token(&cookie),
        cookie: Arc::new(SecretString::new(cookie)),
        address,
        request_id,
    });
    next.run(request).await
}

/// A refused or failed request, shown as a page with the right status.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    fields: Vec<(String, String)>,
}

impl Failure {
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            fields: Vec::new(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::InvalidArgument(_) | Error::OutOfRange(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) | Error::FailedPrecondition(_) | Error::Aborted(_) => {
                StatusCode::CONFLICT
            }
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::NotDurable(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if matches!(
            error,
            Error::Internal(_) | Error::Unavailable(_) | Error::NotDurable(_)
        ) {
            // The cause goes to the log; the page says only what failed.
            tracing::error!(?error, "console request failed");
        }
        let fields = match &error {
            Error::InvalidArgument(violations) => violations
                .iter()
                .map(|violation| (violation.field.clone(), violation.description.clone()))
                .collect(),
            _ => Vec::new(),
        };
        let message = match &error {
            Error::InvalidArgument(_) => "Some fields need fixing:".to_owned(),
            other => other.to_string(),
        };
        Self {
            status,
            message,
            fields,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Refused");
        let page = views::failure(None, title, &self.message, &self.fields);
        (self.status, axum::response::Html(page.into_string())).into_response()
    }
}
