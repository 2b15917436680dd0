//! Datasets and allow-lists as Verify enforces them, on both stores.

use crate::on_both_stores;
use crate::support::{TestServer, authed, mask};
use keyrack::proto::{self, VerifyCode};
use tonic::Code;
use tonic_types::StatusExt;

async fn verify(server: &TestServer, token: &str, dataset: &str, ip: &str) -> VerifyCode {
    server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: token.into(),
            dataset: dataset.into(),
            client_ip: ip.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .code()
}

async fn create_dataset(
    server: &TestServer,
    name: &str,
    skip_key: bool,
) -> Result<proto::CreateDatasetResponse, tonic::Status> {
    server
        .admin()
        .await
        .create_dataset(authed(
            &server.admin_token,
            proto::CreateDatasetRequest {
                name: name.into(),
                description: format!("{name} data"),
                skip_key,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn identity_with(
    server: &TestServer,
    name: &str,
    datasets: &[&str],
) -> Result<proto::CreateIdentityResponse, tonic::Status> {
    server
        .admin()
        .await
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: name.into(),
                datasets: datasets.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
}

on_both_stores!(
    the_dataset_wizard_key_works_for_its_dataset_only,
    wizard_body
);
async fn wizard_body(server: TestServer) {
    let created = create_dataset(&server, "sales", false).await.unwrap();
    let dataset = created.dataset.unwrap();
    assert_eq!(
        (dataset.name.as_str(), dataset.description.as_str()),
        ("sales", "sales data")
    );
    let identity = created.identity.unwrap();
    assert_eq!(identity.name, "sales");
    assert_eq!(identity.datasets, ["sales"]);
    assert_eq!(created.key.unwrap().identity_id, identity.id);
    create_dataset(&server, "audit", true).await.unwrap();

    assert_eq!(
        verify(&server, &created.token, "sales", "").await,
        VerifyCode::Valid
    );
    assert_eq!(
        verify(&server, &created.token, "audit", "").await,
        VerifyCode::DatasetNotAllowed
    );
    assert_eq!(
        verify(&server, &created.token, "", "").await,
        VerifyCode::Valid
    );
    let answer = server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: created.token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.datasets, ["sales"]);

    let skipped = create_dataset(&server, "metrics", true).await.unwrap();
    assert!(skipped.identity.is_none() && skipped.key.is_none() && skipped.token.is_empty());
    let duplicate = create_dataset(&server, "sales", true).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    // The wizard names the identity after the dataset; a clash leaves nothing behind.
    identity_with(&server, "clash", &[]).await.unwrap();
    let clash = create_dataset(&server, "clash", false).await.unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists);
    let gone = server
        .admin()
        .await
        .get_dataset(authed(
            &server.admin_token,
            proto::GetDatasetRequest {
                dataset: "clash".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bad = create_dataset(&server, "bad name", false)
        .await
        .unwrap_err();
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "name"
    );

    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .admin()
            .await
            .list_datasets(authed(
                &server.admin_token,
                proto::ListDatasetsRequest {
                    page_size: 2,
                    page_token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.datasets.into_iter().map(|d| d.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, ["audit", "metrics", "sales"]);
    server.stop().await;
}

on_both_stores!(
    grants_and_revocations_take_effect_on_the_next_verify,
    grants_body
);
async fn grants_body(server: TestServer) {
    create_dataset(&server, "sales", true).await.unwrap();
    create_dataset(&server, "audit", true).await.unwrap();
    let unknown = identity_with(&server, "reader", &["sales", "nope"])
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().contains("\"nope\""),
        "{}",
        unknown.message()
    );
    let reader = identity_with(&server, "reader", &["sales"]).await.unwrap();
    let id = reader.identity.unwrap().id;
    assert_eq!(
        verify(&server, &reader.token, "audit", "").await,
        VerifyCode::DatasetNotAllowed
    );

    let update = |datasets: &[&str]| proto::UpdateIdentityRequest {
        identity: Some(proto::Identity {
            id: id.clone(),
            datasets: datasets.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }),
        update_mask: mask(&["datasets"]),
    };
    let mut admin = server.admin().await;
    admin
        .update_identity(authed(&server.admin_token, update(&["sales", "audit"])))
        .await
        .unwrap();
    assert_eq!(
        verify(&server, &reader.token, "audit", "").await,
        VerifyCode::Valid
    );
    admin
        .update_identity(authed(&server.admin_token, update(&["audit"])))
        .await
        .unwrap();
    assert_eq!(
        verify(&server, &reader.token, "sales", "").await,
        VerifyCode::DatasetNotAllowed
    );
    let unknown = admin
        .update_identity(authed(&server.admin_token, update(&["ghost"])))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    server.stop().await;
}

on_both_stores!(deleting_a_dataset_detaches_it_only_when_forced, delete_body);
async fn delete_body(server: TestServer) {
    create_dataset(&server, "sales", true).await.unwrap();
    create_dataset(&server, "audit", true).await.unwrap();
    let mut tokens = Vec::new();
    for index in 0..3 {
        tokens.push(
            identity_with(&server, &format!("reader{index}"), &["sales", "audit"])
                .await
                .unwrap()
                .token,
        );
    }
    let mut admin = server.admin().await;
    let delete = |force: bool| proto::DeleteDatasetRequest {
        dataset: "sales".into(),
        force,
    };
    let refused = admin
        .delete_dataset(authed(&server.admin_token, delete(false)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("reader0") && refused.message().contains("force"),
        "{}",
        refused.message()
    );
    assert_eq!(
        verify(&server, &tokens[0], "sales", "").await,
        VerifyCode::Valid
    );

    admin
        .delete_dataset(authed(&server.admin_token, delete(true)))
        .await
        .unwrap();
    for token in &tokens {
        assert_eq!(
            verify(&server, token, "sales", "").await,
            VerifyCode::DatasetNotAllowed
        );
        assert_eq!(verify(&server, token, "audit", "").await, VerifyCode::Valid);
    }
    let listed = admin
        .list_identities(authed(
            &server.admin_token,
            proto::ListIdentitiesRequest {
                filter: "dataset = audit".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.identities.len(), 3);
    assert!(listed.identities.iter().all(|i| i.datasets == ["audit"]));
    let again = admin
        .delete_dataset(authed(&server.admin_token, delete(true)))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    // Unreferenced datasets go without force.
    create_dataset(&server, "scratch", true).await.unwrap();
    admin
        .delete_dataset(authed(
            &server.admin_token,
            proto::DeleteDatasetRequest {
                dataset: "scratch".into(),
                force: false,
            },
        ))
        .await
        .unwrap();
    server.stop().await;
}

on_both_stores!(list_identities_filters, filters_body);
async fn filters_body(server: TestServer) {
    create_dataset(&server, "sales", true).await.unwrap();
    identity_with(&server, "reader", &["sales"]).await.unwrap();
    let other = identity_with(&server, "other", &[]).await.unwrap();
    let mut admin = server.admin().await;
    admin
        .disable_identity(authed(
            &server.admin_token,
            proto::DisableIdentityRequest {
                identity_id: other.identity.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let names = |filter: &str| {
        let request = authed(
            &server.admin_token,
            proto::ListIdentitiesRequest {
                filter: filter.into(),
                ..Default::default()
            },
        );
        let mut admin = admin.clone();
        async move {
            let mut names: Vec<String> = admin
                .list_identities(request)
                .await
                .unwrap()
                .into_inner()
                .identities
                .into_iter()
                .map(|i| i.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names("dataset = \"sales\"").await, ["reader"]);
    assert_eq!(names("state = DISABLED").await, ["other"]);
    assert_eq!(
        names("kind = SERVICE AND state = ACTIVE").await,
        ["reader", "root"]
    );
    assert_eq!(names("admin = true").await, ["root"]);
    assert!(names("kind = PERSON").await.is_empty());
    let bad = admin
        .list_identities(authed(
            &server.admin_token,
            proto::ListIdentitiesRequest {
                filter: "name = x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "filter"
    );
    server.stop().await;
}

on_both_stores!(key_allow_lists_narrow_the_identity_list, narrowing_body);
async fn narrowing_body(server: TestServer) {
    let mut admin = server.admin().await;
    let created = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "edge".into(),
                allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let narrow = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: created.identity.unwrap().id,
                name: "narrow".into(),
                allowed_cidrs: vec!["10.1.0.0/16".into(), "2001:db8:1::/48".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for (ip, expected) in [
        ("10.1.0.0", VerifyCode::Valid),
        ("10.1.255.255", VerifyCode::Valid),
        ("::ffff:10.1.2.3", VerifyCode::Valid),
        ("10.2.0.0", VerifyCode::IpNotAllowed),
        ("10.0.255.255", VerifyCode::IpNotAllowed),
        ("2001:db8:1::", VerifyCode::Valid),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", VerifyCode::Valid),
        ("2001:db8:2::", VerifyCode::IpNotAllowed),
        ("192.0.2.1", VerifyCode::IpNotAllowed),
        ("", VerifyCode::IpNotAllowed),
    ] {
        assert_eq!(
            verify(&server, &narrow.token, "", ip).await,
            expected,
            "{ip}"
        );
    }
    // The identity's own key is bound by the identity's list only.
    assert_eq!(
        verify(&server, &created.token, "", "10.2.0.0").await,
        VerifyCode::Valid
    );
    // Widening the identity's list to anywhere leaves the key's list in force.
    admin
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: narrow.key.as_ref().unwrap().identity_id.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["allowed_cidrs"]),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        verify(&server, &created.token, "", "").await,
        VerifyCode::Valid
    );
    assert_eq!(
        verify(&server, &narrow.token, "", "10.2.0.0").await,
        VerifyCode::IpNotAllowed
    );
    // A wrong secret never learns about the allow-list.
    let mut wrong = narrow.token.clone();
    let len = wrong.len();
    wrong.replace_range(
        len - 20..len - 19,
        if &narrow.token[len - 20..len - 19] == "a" {
            "b"
        } else {
            "a"
        },
    );
    assert_eq!(
        verify(&server, &wrong, "", "192.0.2.1").await,
        VerifyCode::Malformed
    );
    server.stop().await;
}
