//! SCIM provisioning on both stores: the User mapping to PERSON identities,
//! filters and pages, versions, errors, and Lifecycle rule 7 seen through the
//! Admin API. (The third-party compliance checker runs against the binary in
//! cli.rs.)

use crate::on_both_stores;
use crate::support::{TestServer, authed};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use keyrack::proto::{self, VerifyCode};
use serde_json::{Value, json};
use tonic::Code;
use tower::ServiceExt;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// What one SCIM call answered.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Value,
}

/// Calls the SCIM API of `server` as `token` (none when empty).
pub(crate) async fn call_as(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    extra: &[(header::HeaderName, &str)],
) -> Answer {
    let router = keyrack::scim::router(
        server.authority.clone(),
        keyrack::scim::ScimOptions {
            request_timeout: std::time::Duration::from_secs(10),
            tls: None,
        },
    );
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/scim/v2{path}"))
        .header(header::HOST, "keyrack.test");
    if !token.is_empty() {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in extra {
        request = request.header(name, *value);
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/scim+json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = router.oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/scim+json",
            "every SCIM body is application/scim+json"
        );
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> Answer {
    call_as(server, &server.admin_token, method, path, body, &[]).await
}

async fn create_user(server: &TestServer, user: Value) -> Value {
    let answer = call(server, Method::POST, "/Users", Some(user)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(
        answer.headers[header::LOCATION],
        answer.body["meta"]["location"].as_str().unwrap()
    );
    answer.body
}

fn patch(operations: Value) -> Value {
    json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
}

async fn users_matching(server: &TestServer, query: &str) -> Value {
    let answer = call(server, Method::GET, &format!("/Users?{query}"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

async fn a_user_is_a_person_identity_whose_keys_follow_active(server: TestServer) {
    let user = create_user(
        &server,
        json!({
            "schemas": [USER_SCHEMA],
            "userName": "ada@example.com",
            "externalId": "00u1ada",
            "displayName": "Ada Lovelace",
            "active": true,
            "emails": [{"value": "ada@example.com", "primary": true}],
        }),
    )
    .await;
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(user["userName"], "ada@example.com");
    assert_eq!(user["meta"]["resourceType"], "User");
    assert!(
        user.get("emails").is_none(),
        "attributes keyrack does not store are not echoed"
    );

    let mut admin = server.admin().await;
    let identity = admin
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(identity.kind(), proto::IdentityKind::Person);
    assert_eq!(identity.name, "ada@example.com");
    assert_eq!(identity.external_id, "00u1ada");
    assert_eq!(identity.description, "Ada Lovelace");

    // Admins may still mint keys for a person.
    let minted = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: id.clone(),
                name: "laptop".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        server.verify_code(&minted.token).await.unwrap(),
        VerifyCode::Valid
    );

    // Entra ID sends booleans as strings in PATCH values.
    let deactivated = call(
        &server,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(patch(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )),
    )
    .await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    assert_eq!(deactivated.body["active"], false);
    assert_eq!(
        server.verify_code(&minted.token).await.unwrap(),
        VerifyCode::Disabled
    );

    let reactivated = call(
        &server,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(patch(json!([{"op": "replace", "value": {"active": true}}]))),
    )
    .await;
    assert_eq!(reactivated.status, StatusCode::OK, "{}", reactivated.body);
    assert_eq!(
        server.verify_code(&minted.token).await.unwrap(),
        VerifyCode::Valid
    );

    // PUT replaces the whole profile: what it leaves out is unassigned.
    let replaced = call(
        &server,
        Method::PUT,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [USER_SCHEMA], "userName": "ada@example.org", "active": false})),
    )
    .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["userName"], "ada@example.org");
    assert!(replaced.body.get("externalId").is_none());
    assert!(replaced.body.get("displayName").is_none());
    assert_eq!(
        server.verify_code(&minted.token).await.unwrap(),
        VerifyCode::Disabled
    );

    // Deleting the user deletes the identity and its keys.
    let deleted = call(&server, Method::DELETE, &format!("/Users/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.verify_code(&minted.token).await.unwrap(),
        VerifyCode::Unknown
    );
    let gone = call(&server, Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["status"], "404");
    let key_gone = admin
        .get_key(authed(
            &server.admin_token,
            proto::GetKeyRequest {
                key_id: minted.key.unwrap().id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(key_gone.code(), Code::NotFound);

    // Each provisioning call left one audit event about the person.
    let events = server.store.list_audit(None, 100).await.unwrap();
    let actions: Vec<&str> = events
        .iter()
        .filter(|event| event.target_ids.contains(&id))
        .map(|event| event.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "scim.DeleteUser",
            "scim.ReplaceUser",
            "scim.PatchUser",
            "scim.PatchUser",
            "CreateKey",
            "scim.CreateUser"
        ]
    );
    assert!(events.iter().all(|event| event.outcome == "OK"));
    server.stop().await;
}
on_both_stores!(
    a_user_is_a_person_identity,
    a_user_is_a_person_identity_whose_keys_follow_active
);

async fn rule_7_keeps_lifecycle_with_the_identity_provider(server: TestServer) {
    let user = create_user(
        &server,
        json!({"schemas": [USER_SCHEMA], "userName": "grace", "active": true}),
    )
    .await;
    let id = user["id"].as_str().unwrap().to_owned();
    let token = &server.admin_token;
    let mut admin = server.admin().await;
    let managed = |status: tonic::Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("managed by the identity provider"),
            "{status:?}"
        );
    };
    managed(
        admin
            .disable_identity(authed(
                token,
                proto::DisableIdentityRequest {
                    identity_id: id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    );
    managed(
        admin
            .enable_identity(authed(
                token,
                proto::EnableIdentityRequest {
                    identity_id: id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    );
    let key = admin
        .create_key(authed(
            token,
            proto::CreateKeyRequest {
                identity_id: id.clone(),
                name: "cli".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    managed(
        admin
            .disable_key(authed(
                token,
                proto::DisableKeyRequest {
                    key_id: key.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    );
    managed(
        admin
            .enable_key(authed(
                token,
                proto::EnableKeyRequest {
                    key_id: key.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    );
    managed(
        admin
            .roll_key(authed(
                token,
                proto::RollKeyRequest {
                    key_id: key.id.clone(),
                    totp_code: "123456".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    // Name and description edits are allowed, and SCIM sees them.
    let renamed = admin
        .update_identity(authed(
            token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: id.clone(),
                    name: "grace.hopper".into(),
                    description: "Rear Admiral".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "description".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "grace.hopper");
    let seen = call(&server, Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(seen.body["userName"], "grace.hopper");
    assert_eq!(seen.body["displayName"], "Rear Admiral");
    // Revoking a person's key stays an admin's call.
    admin
        .revoke_key(authed(token, proto::RevokeKeyRequest { key_id: key.id }))
        .await
        .unwrap();
    server.stop().await;
}
on_both_stores!(rule_7, rule_7_keeps_lifecycle_with_the_identity_provider);

async fn filters_and_pages_cover_people_only(server: TestServer) {
    server.create_service("not_a_person").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let user = create_user(
            &server,
            json!({
                "schemas": [USER_SCHEMA],
                "userName": format!("user{n}@example.com"),
                "externalId": format!("ext-{n}"),
                "active": n % 2 == 0,
            }),
        )
        .await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    let all = users_matching(&server, "").await;
    assert_eq!(all["totalResults"], 5, "services are not SCIM users: {all}");
    assert_eq!(
        all["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    );

    let by_name = users_matching(&server, "filter=userName%20eq%20%22user3%40example.com%22").await;
    assert_eq!(by_name["totalResults"], 1);
    assert_eq!(by_name["Resources"][0]["id"], ids[3].as_str());
    let no_one = users_matching(&server, "filter=userName%20eq%20%22not_a_person%22").await;
    assert_eq!(no_one["totalResults"], 0, "a service's name is not a user");
    let by_external = users_matching(&server, "filter=externalId%20eq%20%22ext-1%22").await;
    assert_eq!(by_external["Resources"][0]["id"], ids[1].as_str());
    let by_id = users_matching(&server, &format!("filter=id%20eq%20%22{}%22", ids[4])).await;
    assert_eq!(by_id["totalResults"], 1);
    let inactive = users_matching(&server, "filter=active%20eq%20false").await;
    assert_eq!(inactive["totalResults"], 2);

    let page = users_matching(&server, "startIndex=2&count=2&attributes=userName").await;
    assert_eq!(page["totalResults"], 5);
    assert_eq!(page["startIndex"], 2);
    assert_eq!(page["itemsPerPage"], 2);
    let first = &page["Resources"][0];
    assert!(first.get("userName").is_some() && first.get("externalId").is_none());
    let past_the_end = users_matching(&server, "startIndex=9").await;
    assert_eq!(past_the_end["itemsPerPage"], 0);

    let searched = call(
        &server,
        Method::POST,
        "/Users/.search",
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": "userName sw \"user\" and active eq true",
            "count": 10,
        })),
    )
    .await;
    assert_eq!(searched.status, StatusCode::OK, "{}", searched.body);
    assert_eq!(searched.body["totalResults"], 3);

    let bad = call(
        &server,
        Method::GET,
        "/Users?filter=emails%5Btype%20eq%20%22work%22%5D",
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["scimType"], "invalidFilter");
    server.stop().await;
}
on_both_stores!(filters_and_pages, filters_and_pages_cover_people_only);

async fn bad_requests_get_scim_errors(server: TestServer) {
    let ada = json!({"schemas": [USER_SCHEMA], "userName": "ada"});
    let user = create_user(&server, ada.clone()).await;
    let id = user["id"].as_str().unwrap().to_owned();

    let duplicate = call(&server, Method::POST, "/Users", Some(ada)).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.body["scimType"], "uniqueness");
    // A service's name is taken for people too: names are unique in the authority.
    server.create_service("svc_one").await;
    let clash = call(
        &server,
        Method::POST,
        "/Users",
        Some(json!({"schemas": [USER_SCHEMA], "userName": "svc_one"})),
    )
    .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);

    for (body, scim_type) in [
        (json!({"userName": "no_schemas"}), "invalidSyntax"),
        (json!({"schemas": [USER_SCHEMA]}), "invalidValue"),
        (
            json!({"schemas": [USER_SCHEMA], "userName": 7}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "x".repeat(129)}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "b", "active": "maybe"}),
            "invalidValue",
        ),
        (
            json!({"schemas": [USER_SCHEMA], "userName": "b", "displayName": "d".repeat(257)}),
            "invalidValue",
        ),
        (json!([1, 2]), "invalidSyntax"),
    ] {
        let answer = call(&server, Method::POST, "/Users", Some(body.clone())).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["scimType"], scim_type,
            "{body}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["schemas"][0],
            "urn:ietf:params:scim:api:messages:2.0:Error"
        );
    }
    let not_json = call_as(
        &server,
        &server.admin_token,
        Method::POST,
        "/Users",
        None,
        &[],
    )
    .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);

    for operations in [
        json!([]),
        json!([{"op": "remove"}]),
        json!([{"op": "move", "path": "userName"}]),
        json!([{"op": "remove", "path": "userName"}]),
        json!([{"op": "replace", "path": "id", "value": "x"}]),
        json!([{"op": "add", "value": "not an object"}]),
    ] {
        let answer = call(
            &server,
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(operations.clone())),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{operations}: {}",
            answer.body
        );
    }
    // Nothing half-written: the user is as it was.
    let unchanged = call(&server, Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(unchanged.body["userName"], "ada");
    assert_eq!(unchanged.body["meta"]["version"], user["meta"]["version"]);

    // Versions: a stale If-Match is refused; the current one is accepted.
    let version = user["meta"]["version"].as_str().unwrap().to_owned();
    let renamed = call(
        &server,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(patch(
            json!([{"op": "replace", "path": "displayName", "value": "Ada"}]),
        )),
    )
    .await;
    assert_eq!(renamed.status, StatusCode::OK);
    assert_ne!(renamed.headers[header::ETAG], version.as_str());
    let stale = call_as(
        &server,
        &server.admin_token,
        Method::DELETE,
        &format!("/Users/{id}"),
        None,
        &[(header::IF_MATCH, &version)],
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let current = renamed.headers[header::ETAG].to_str().unwrap().to_owned();
    let deleted = call_as(
        &server,
        &server.admin_token,
        Method::DELETE,
        &format!("/Users/{id}"),
        None,
        &[(header::IF_MATCH, &current)],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    for path in ["/Users/not-an-id", "/Users/AAAAAAAAAAAA", "/Nope"] {
        let answer = call(&server, Method::GET, path, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
    let service = server.create_service("svc_two").await;
    let as_user = call(
        &server,
        Method::GET,
        &format!("/Users/{}", service.identity.unwrap().id),
        None,
    )
    .await;
    assert_eq!(
        as_user.status,
        StatusCode::NOT_FOUND,
        "services are not users"
    );

    let huge = json!({"schemas": [USER_SCHEMA], "userName": "big", "junk": "x".repeat(100_000)});
    let too_big = call(&server, Method::POST, "/Users", Some(huge)).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bulk = call(&server, Method::POST, "/Bulk", Some(json!({}))).await;
    assert_eq!(bulk.status, StatusCode::NOT_IMPLEMENTED);
    let not_allowed = call(&server, Method::DELETE, "/Schemas", None).await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}
on_both_stores!(bad_requests, bad_requests_get_scim_errors);

async fn only_admins_may_provision(server: TestServer) {
    let service = server.create_service("plain").await;
    for token in ["", "kr_nonsense", service.token.as_str()] {
        let answer = call_as(&server, token, Method::GET, "/Users", None, &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert_eq!(
            answer.headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"keyrack\""
        );
        assert_eq!(answer.body["status"], "401");
        let discovery = call_as(
            &server,
            token,
            Method::GET,
            "/ServiceProviderConfig",
            None,
            &[],
        )
        .await;
        assert_eq!(discovery.status, StatusCode::UNAUTHORIZED);
    }
    let config = call(&server, Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!(config.status, StatusCode::OK);
    assert_eq!(config.body["patch"]["supported"], true);
    assert_eq!(config.body["etag"]["supported"], true);
    let schemas = call(&server, Method::GET, "/Schemas", None).await;
    let names: Vec<&str> = schemas.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["User", "ServiceProviderConfig", "ResourceType", "Schema"]
    );
    let user_type = call(&server, Method::GET, "/ResourceTypes/User", None).await;
    assert_eq!(user_type.body["endpoint"], "/Users");
    server.stop().await;
}
on_both_stores!(only_admins, only_admins_may_provision);
