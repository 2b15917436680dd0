//! SCIM 2.0 provisioning (RFC 7643/7644) under `/scim/v2`, served over HTTP by
//! axum in the same process and runtime as gRPC: the identity provider
//! creates, updates and removes PERSON identities through it. Every request
//! carries the bearer token of an admin identity.

mod discovery;
mod error;
mod filter;
pub(crate) mod listener;
mod user;

pub use error::ScimError;

use crate::domain::{Error, IdentityId};
use crate::service::{Authority, Caller, PersonProfile, audit};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use filter::Filter;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use user::{Attribute, Projection};

/// Where the SCIM API is mounted.
pub const SCIM_ROOT: &str = "/scim/v2";
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most resources one list response returns (and the default `count`).
pub const MAX_PAGE_COUNT: usize = 200;

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

/// How the SCIM server runs.
#[derive(Debug, Clone)]
pub struct ScimOptions {
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Serve TLS with this configuration; plaintext without it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct ScimState {
    authority: Arc<Authority>,
    options: ScimOptions,
}

type Shared = State<Arc<ScimState>>;
type Reply = Result<Response, ScimError>;

/// A JSON response with the SCIM media type.
fn scim_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/scim+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// The SCIM routes under `/scim/v2`, for `serve` and for in-process callers.
pub fn router(authority: Arc<Authority>, options: ScimOptions) -> Router {
    let state = Arc::new(ScimState { authority, options });
    let not_allowed = || async {
        ScimError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
        )
    };
    let api = Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/.search", post(search_users))
        .route(
            "/Users/{id}",
            get(get_user)
                .put(replace_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        // Users are the only resource type, so a search across all types
        // (RFC 7644 §3.4.3) is a search of Users.
        .route("/.search", post(search_users))
        .route("/Bulk", post(not_implemented))
        .method_not_allowed_fallback(not_allowed)
        .fallback(|| async { ScimError::not_found("no such SCIM endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    Router::new().nest(SCIM_ROOT, api).fallback(|| async {
        ScimError::not_found("no such endpoint; SCIM is served under /scim/v2")
    })
}

/// Serves SCIM on `listener` until `shutdown` completes, then lets requests
/// in flight finish (each is bounded by the request timeout).
pub async fn serve(
    listener: TcpListener,
    authority: Arc<Authority>,
    options: ScimOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = options.tls.clone();
    listener::serve(listener, router(authority, options), tls, shutdown).await
}

/// Admits admin callers only, and bounds every request's duration.
async fn authenticate(State(state): Shared, request: Request, next: Next) -> Response {
    let request_method = request.method().clone();
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(crate::domain::token::bearer_credential)
        .map(str::to_owned);
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let request_id = audit::request_id(
        request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok()),
    );
    let mut request = request;
    let work = async {
        let caller = state
            .authority
            .authenticate_admin(
                token.as_deref(),
                crate::service::CallContext::from_headers(address, |name| {
                    request
                        .headers()
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                }),
            )
            .await?;
        tracing::debug!(actor = %caller.identity.id, method = %request.method(), path = %request.uri().path(), "SCIM request");
        request.extensions_mut().insert(CallContext {
            caller,
            address,
            request_id,
        });
        Ok::<_, ScimError>(next.run(request).await)
    };
    let method = match request_method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    let response = match tokio::time::timeout(state.options.request_timeout, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(),
        Err(_) => {
            ScimError::new(StatusCode::SERVICE_UNAVAILABLE, "the request timed out").into_response()
        }
    };
    crate::metrics::metrics()
        .scim_requests
        .get_or_create(&crate::metrics::ScimLabels {
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Who made a SCIM request, for its audit event.
#[derive(Clone)]
struct CallContext {
    caller: Caller,
    address: Option<SocketAddr>,
    request_id: String,
}

impl CallContext {
    /// Runs `work` as one audited operation named `scim.<action>`, about
    /// `target` when it is known up front.
    async fn audited<T>(
        &self,
        state: &ScimState,
        action: &str,
        target: Option<&IdentityId>,
        work: impl Future<Output = Result<T, ScimError>>,
    ) -> Result<T, ScimError> {
        let mut event = audit::event(
            &format!("scim.{action}"),
            Some(&self.caller),
            self.address,
            self.request_id.clone(),
        );
        if let Some(target) = target {
            event.target_ids.push(target.to_string());
        }
        state
            .authority
            .audited(event, work, |error: &ScimError| {
                format!("HTTP {}", error.status().as_u16())
            })
            .await
    }
}

/// `https://host/scim/v2`, from the request's Host header.
fn base_url(state: &ScimState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| !host.is_empty() && host.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = if state.options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}{SCIM_ROOT}")
}

async fn not_implemented() -> ScimError {
    ScimError::new(
        StatusCode::NOT_IMPLEMENTED,
        "keyrack does not support bulk operations",
    )
}

async fn service_provider_config(State(state): Shared, headers: HeaderMap) -> Response {
    scim_json(
        StatusCode::OK,
        &discovery::service_provider_config(&base_url(&state, &headers)),
    )
}

fn list_response(total: usize, start_index: usize, resources: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_RESPONSE_SCHEMA],
            "totalResults": total,
            "startIndex": start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

async fn resource_types(State(state): Shared, headers: HeaderMap) -> Response {
    list_response(
        1,
        1,
        vec![discovery::user_resource_type(&base_url(&state, &headers))],
    )
}

async fn resource_type(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    if id != "User" {
        return Err(ScimError::not_found(format!("resource type {id:?}")));
    }
    Ok(scim_json(
        StatusCode::OK,
        &discovery::user_resource_type(&base_url(&state, &headers)),
    ))
}

async fn schemas(State(state): Shared, headers: HeaderMap) -> Response {
    let all = discovery::schemas(&base_url(&state, &headers));
    list_response(all.len(), 1, all)
}

async fn schema(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    discovery::schemas(&base_url(&state, &headers))
        .into_iter()
        .find(|schema| schema["id"] == id.as_str())
        .map(|schema| scim_json(StatusCode::OK, &schema))
        .ok_or_else(|| ScimError::not_found(format!("schema {id:?}")))
}

/// A request body as JSON, with the body limit answered as a SCIM error.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ScimError> {
    let bytes = body.map_err(|rejection| {
        ScimError::new(
            rejection.status(),
            format!("the body could not be read (at most {MAX_BODY_BYTES} bytes)"),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ScimError::bad_request("invalidSyntax", format!("the body is not JSON: {e}")))
}

/// The revision an `If-Match` header pins: none when it is absent or `*`.
/// Anything else that names no single version keyrack issued (a list, a
/// strong or foreign ETag, garbage) is a precondition that cannot hold: 412
/// (RFC 7232 §3.1), never the same as no header, which would let the write
/// through. (A list that names the current version among others is refused
/// too: a client that sends one gets a 412 and can re-read.)
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ScimError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let unmatchable = || {
        ScimError::new(
            StatusCode::PRECONDITION_FAILED,
            "If-Match names no single version of this resource",
        )
    };
    let value = value.to_str().map_err(|_| unmatchable())?.trim();
    if value == "*" {
        return Ok(None);
    }
    if value.contains(',') {
        return Err(unmatchable());
    }
    user::revision_of(value).map(Some).ok_or_else(unmatchable)
}

fn person_id(id: &str) -> Result<IdentityId, ScimError> {
    IdentityId::parse(id).map_err(|_| ScimError::not_found(format!("person {id:?}")))
}

/// One User response with its ETag and, on creation, its Location, shaped
/// by the request's `attributes`/`excludedAttributes`.
fn user_response(
    status: StatusCode,
    person: &crate::domain::Identity,
    state: &ScimState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    let base = base_url(state, headers);
    let projection = projection_of(query);
    let users_url = format!("{base}/Users");
    let rendered = user::render(person, &users_url);
    let location = rendered["meta"]["location"].as_str().map(str::to_owned);
    let mut response = scim_json(status, &projection.apply(rendered));
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&user::version(person)) {
        headers.insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    response
}

fn projection_of(query: &HashMap<String, String>) -> Projection {
    Projection::new(
        query.get("attributes").map(String::as_str),
        query.get("excludedAttributes").map(String::as_str),
    )
}

async fn create_user(
    State(state): Shared,
    Extension(context): Extension<CallContext>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let person = context
        .audited(&state, "CreateUser", None, async {
            let profile = user::profile_from_body(&json_body(body)?)?;
            Ok(state.authority.provision_person(profile).await?)
        })
        .await?;
    Ok(user_response(
        StatusCode::CREATED,
        &person,
        &state,
        &headers,
        &query,
    ))
}

async fn get_user(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    let person = state.authority.get_person(&person_id(&id)?).await?;
    Ok(user_response(
        StatusCode::OK,
        &person,
        &state,
        &headers,
        &query,
    ))
}

async fn replace_user(
    State(state): Shared,
    Extension(context): Extension<CallContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let id = person_id(&id)?;
    let person = context
        .audited(&state, "ReplaceUser", Some(&id), async {
            let profile = user::profile_from_body(&json_body(body)?)?;
            Ok(state
                .authority
                .update_person(&id, if_match(&headers)?, |_| Ok(profile.clone()))
                .await?)
        })
        .await?;
    Ok(user_response(
        StatusCode::OK,
        &person,
        &state,
        &headers,
        &query,
    ))
}

/// One PATCH operation (RFC 7644 §3.5.2), checked before any is applied.
struct PatchOperation {
    remove: bool,
    /// `None`: no path (the value is an object of attributes). `Some(None)`:
    /// a path keyrack does not store, which is ignored.
    target: Option<Option<Attribute>>,
    value: Value,
}

fn patch_operations(body: &Value) -> Result<Vec<PatchOperation>, ScimError> {
    let declares_patch = body["schemas"]
        .as_array()
        .is_some_and(|schemas| schemas.iter().any(|s| s == PATCH_OP_SCHEMA));
    if !declares_patch {
        return Err(ScimError::bad_request(
            "invalidSyntax",
            format!("`schemas` must be [{PATCH_OP_SCHEMA:?}]"),
        ));
    }
    let operations = body
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("operations")))
        .and_then(|(_, operations)| operations.as_array())
        .filter(|operations| !operations.is_empty())
        .ok_or_else(|| {
            ScimError::bad_request("invalidSyntax", "`Operations` must be a non-empty array")
        })?;
    operations
        .iter()
        .enumerate()
        .map(|(index, operation)| {
            let field = |name: &str| {
                operation
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .map(|(_, value)| value)
            };
            let remove = match field("op")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("add" | "replace") => false,
                Some("remove") => true,
                _ => {
                    return Err(ScimError::bad_request(
                        "invalidSyntax",
                        format!("Operations[{index}].op must be add, replace or remove"),
                    ));
                }
            };
            let target = match field("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(path)) if Attribute::is_schema_urn(path) => None,
                Some(Value::String(path)) => match Attribute::parse(path) {
                    Some(attribute) if attribute.is_read_only() => {
                        return Err(ScimError::bad_request(
                            "mutability",
                            format!("Operations[{index}]: {path} is read-only"),
                        ));
                    }
                    Some(attribute) => Some(Some(attribute)),
                    None if path.trim().is_empty() => {
                        return Err(ScimError::bad_request(
                            "invalidPath",
                            format!("Operations[{index}].path is empty"),
                        ));
                    }
                    None => Some(None),
                },
                Some(_) => {
                    return Err(ScimError::bad_request(
                        "invalidPath",
                        format!("Operations[{index}].path must be a string"),
                    ));
                }
            };
            if remove && target.is_none() {
                return Err(ScimError::bad_request(
                    "noTarget",
                    format!("Operations[{index}]: remove needs a path"),
                ));
            }
            let value = field("value").cloned().unwrap_or(Value::Null);
            if !remove && target.is_none() && !value.is_object() {
                return Err(ScimError::bad_request(
                    "invalidValue",
                    format!(
                        "Operations[{index}]: without a path, value must be an object of attributes"
                    ),
                ));
            }
            Ok(PatchOperation {
                remove,
                target,
                value,
            })
        })
        .collect()
}

fn apply_patch(
    operations: &[PatchOperation],
    mut profile: PersonProfile,
) -> Result<PersonProfile, Error> {
    for operation in operations {
        match (&operation.target, operation.remove) {
            (Some(None), _) => {}
            (Some(Some(attribute)), true) => user::unset(&mut profile, *attribute)?,
            (Some(Some(attribute)), false) => {
                user::set(&mut profile, *attribute, &operation.value)?
            }
            (None, _) => {
                if let Some(object) = operation.value.as_object() {
                    user::set_all(&mut profile, object, &mut false)?;
                }
            }
        }
    }
    Ok(profile)
}

async fn patch_user(
    State(state): Shared,
    Extension(context): Extension<CallContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let id = person_id(&id)?;
    let person = context
        .audited(&state, "PatchUser", Some(&id), async {
            let operations = patch_operations(&json_body(body)?)?;
            Ok(state
                .authority
                .update_person(&id, if_match(&headers)?, |profile| {
                    apply_patch(&operations, profile)
                })
                .await?)
        })
        .await?;
    Ok(user_response(
        StatusCode::OK,
        &person,
        &state,
        &headers,
        &query,
    ))
}

async fn delete_user(
    State(state): Shared,
    Extension(context): Extension<CallContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let id = person_id(&id)?;
    context
        .audited(&state, "DeleteUser", Some(&id), async {
            Ok(state
                .authority
                .delete_person(&id, if_match(&headers)?)
                .await?)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a list or search asks for.
struct ListRequest {
    filter: Option<Filter>,
    start_index: usize,
    count: usize,
    projection: Projection,
}

impl ListRequest {
    fn new(
        filter: Option<&str>,
        start_index: Option<i64>,
        count: Option<i64>,
        projection: Projection,
    ) -> Result<Self, ScimError> {
        let filter = filter
            .filter(|text| !text.trim().is_empty())
            .map(Filter::parse)
            .transpose()
            .map_err(|why| ScimError::bad_request("invalidFilter", why))?;
        // RFC 7644 §3.4.2.4: a startIndex below 1 means 1, a negative count 0.
        let start_index = usize::try_from(start_index.unwrap_or(1).max(1)).unwrap_or(1);
        let count = count.map_or(MAX_PAGE_COUNT, |count| {
            usize::try_from(count.max(0))
                .unwrap_or(0)
                .min(MAX_PAGE_COUNT)
        });
        Ok(Self {
            filter,
            start_index,
            count,
            projection,
        })
    }

    async fn run(self, state: &ScimState, headers: &HeaderMap) -> Reply {
        let skip = self.start_index - 1;
        let (total, people) = match self.filter.as_ref().and_then(Filter::exact_user_name) {
            Some(name) => {
                let found: Vec<_> = state
                    .authority
                    .find_person(name)
                    .await?
                    .into_iter()
                    .collect();
                (
                    found.len(),
                    found.into_iter().skip(skip).take(self.count).collect(),
                )
            }
            None => {
                let filter = self.filter.as_ref();
                state
                    .authority
                    .people_matching(
                        |person| filter.is_none_or(|f| f.matches(person)),
                        skip,
                        self.count,
                    )
                    .await?
            }
        };
        let users_url = format!("{}/Users", base_url(state, headers));
        let resources = people
            .iter()
            .map(|person| self.projection.apply(user::render(person, &users_url)))
            .collect();
        Ok(list_response(total, self.start_index, resources))
    }
}

fn integer(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ScimError> {
    query
        .get(name)
        .map(|text| {
            text.trim().parse().map_err(|_| {
                ScimError::bad_request("invalidValue", format!("{name} must be an integer"))
            })
        })
        .transpose()
}

async fn list_users(
    State(state): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    ListRequest::new(
        query.get("filter").map(String::as_str),
        integer(&query, "startIndex")?,
        integer(&query, "count")?,
        projection_of(&query),
    )?
    .run(&state, &headers)
    .await
}

async fn search_users(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = json_body(body)?;
    let declares_search = body["schemas"]
        .as_array()
        .is_some_and(|schemas| schemas.iter().any(|s| s == SEARCH_REQUEST_SCHEMA));
    if !declares_search {
        return Err(ScimError::bad_request(
            "invalidSyntax",
            format!("`schemas` must be [{SEARCH_REQUEST_SCHEMA:?}]"),
        ));
    }
    let names = |key: &str| -> Option<String> {
        body[key].as_array().map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let number = |key: &str| -> Result<Option<i64>, ScimError> {
        match &body[key] {
            Value::Null => Ok(None),
            value => value.as_i64().map(Some).ok_or_else(|| {
                ScimError::bad_request("invalidValue", format!("{key} must be an integer"))
            }),
        }
    };
    ListRequest::new(
        body["filter"].as_str(),
        number("startIndex")?,
        number("count")?,
        Projection::new(
            names("attributes").as_deref(),
            names("excludedAttributes").as_deref(),
        ),
    )?
    .run(&state, &headers)
    .await
}
