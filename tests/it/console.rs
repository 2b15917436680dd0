//! The admin console: sessions through the service layer on both stores,
//! the panels driven in headless Chromium by `tests/console/browser.py`
//! (selenium), and the Secure cookie under TLS.

use crate::cli::{Served, free_port, text};
use crate::support::{TestServer, authed, require_program};
use keyrack::domain::Error;
use keyrack::proto;
use keyrack::service::{CallContext, sessions};
use std::process::Command;
use std::time::Duration;

const SESSION_TTL: Duration = Duration::from_secs(3600);

/// A session stands for its admin until sign-out, and no longer than its
/// key and its identity's admin flag do.
async fn sessions_follow_their_admin(server: TestServer) {
    let authority = &server.authority;
    let address: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let peer = Some(address.ip());
    let sign_in = CallContext {
        peer: Some(address),
        ..CallContext::default()
    };
    let opened = authority
        .open_console_session(&server.admin_token, sign_in, SESSION_TTL)
        .await
        .unwrap();
    let cookie = opened.cookie.expose().to_owned();
    let caller = authority.console_caller(&cookie, peer).await.unwrap();
    assert_eq!(caller.identity.id, opened.caller.identity.id);
    assert!(
        server.store.get_session(&cookie).await.unwrap().is_none(),
        "the store files a session under a digest, never the cookie itself"
    );
    let forged = format!("{cookie}x");
    assert!(matches!(
        authority.console_caller(&forged, peer).await,
        Err(Error::Unauthenticated(_))
    ));

    // Not an admin token: no session.
    let service = server.create_service("plain").await;
    assert!(matches!(
        authority
            .open_console_session(&service.token, sign_in, SESSION_TTL)
            .await,
        Err(Error::PermissionDenied(_))
    ));

    // Sign-out ends it.
    authority.close_console_session(&cookie).await.unwrap();
    assert!(matches!(
        authority.console_caller(&cookie, peer).await,
        Err(Error::Unauthenticated(_))
    ));

    // Revoking the key that signed in ends its sessions at once.
    let second = server
        .create_identity(proto::CreateIdentityRequest {
            name: "second_admin".into(),
            admin: true,
            ..Default::default()
        })
        .await;
    let cookie = authority
        .open_console_session(&second.token, sign_in, SESSION_TTL)
        .await
        .unwrap()
        .cookie;
    assert!(
        authority
            .console_caller(cookie.expose(), peer)
            .await
            .is_ok()
    );
    let key_id = second.key.unwrap().id;
    server
        .admin()
        .await
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest { key_id },
        ))
        .await
        .unwrap();
    assert!(matches!(
        authority.console_caller(cookie.expose(), peer).await,
        Err(Error::Unauthenticated(_))
    ));

    // A session's form token is its own.
    let other = authority
        .open_console_session(&server.admin_token, sign_in, SESSION_TTL)
        .await
        .unwrap()
        .cookie;
    assert!(sessions::csrf_matches(
        other.expose(),
        &sessions::csrf_token(other.expose())
    ));
    assert!(!sessions::csrf_matches(
        other.expose(),
        &sessions::csrf_token(cookie.expose())
    ));
    server.stop().await;
}

crate::on_both_stores!(sessions_follow_their_admin_on, sessions_follow_their_admin);

/// Every check of the brief, in a real browser: sign in, create an identity
/// and copy its token once, roll with a TOTP code from oathtool, revoke and
/// find the audit entry, the dataset wizard, a SCIM person without Roll or
/// Disable, sign out, cookie flags, CSRF and CSP. The script writes each panel's screenshot to
/// `KEYRACK_CONSOLE_SCREENSHOTS` when set (how docs/console/ is made).
#[test]
fn the_console_works_in_headless_chromium() {
    for program in ["chromium", "chromedriver", "oathtool"] {
        require_program(program);
    }
    let python = require_program("python3");
    let dir = tempfile::tempdir().unwrap();
    let console = format!("127.0.0.1:{}", free_port());
    let scim = format!("127.0.0.1:{}", free_port());
    let served = Served::start(
        dir.path(),
        &["--console-listen", &console, "--scim-listen", &scim],
        &[],
        true,
    );
    let token = served.dev_admin_token();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/browser.py");
    let run = Command::new(python)
        .arg(script)
        .arg(format!("http://{console}"))
        .arg(dir.path())
        .arg(format!("http://{scim}/scim/v2"))
        .env("KEYRACK_ADMIN_TOKEN", &token)
        .output()
        .expect("run the browser script");
    let report = text(&run.stdout);
    assert!(
        run.status.success(),
        "the browser script failed:\n{report}\n{}",
        text(&run.stderr)
    );
    for step in [
        "sign in",
        "cookie HttpOnly SameSite=Strict",
        "CSP without unsafe-inline",
        "POST without CSRF token refused",
        "create identity, token copied once",
        "identity filters",
        "people have no Roll or Disable",
        "a person's description edited",
        "TOTP enrolled",
        "roll with TOTP",
        "revoke, then the audit entry",
        "API keys panel, batch revoke with preview",
        "dataset wizard",
        "sign out",
    ] {
        assert!(
            report.contains(&format!("ok {step}\n")),
            "step {step:?} did not pass:\n{report}"
        );
    }
    let minted = std::fs::read_to_string(dir.path().join("minted")).unwrap();
    let minted: Vec<&str> = minted.lines().collect();
    assert_eq!(
        minted.len(),
        3,
        "identity, roll and wizard each minted one token"
    );
    let (exit, logged) = served.terminate();
    assert!(exit.success(), "{logged}");
    assert!(logged.contains("admin console listening"), "{logged}");
    for secret in minted.iter().chain([&token.as_str()]) {
        assert!(!logged.contains(secret), "a token reached the log");
    }
}

/// Under TLS the console serves HTTPS with the gRPC certificate, and its
/// session cookie is also `Secure`.
#[test]
fn the_console_cookie_is_secure_under_tls() {
    let python = require_program("python3");
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, cert_file, key_file) = crate::transport::tls_files(dir.path());
    let console = format!("127.0.0.1:{}", free_port());
    let served = Served::start(
        dir.path(),
        &[
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--console-listen",
            &console,
        ],
        &[],
        true,
    );
    // Sign in over HTTPS, trusting only the test CA; print the cookie's
    // attributes, never its value.
    let sign_in = r#"
import os, ssl, sys, urllib.parse, urllib.request, urllib.error
class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
context = ssl.create_default_context(cafile=sys.argv[2])
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), Stay)
body = urllib.parse.urlencode({"token": os.environ["KEYRACK_ADMIN_TOKEN"]}).encode()
try:
    opener.open(sys.argv[1] + "/sign-in", data=body)
except urllib.error.HTTPError as reply:
    print(reply.code)
    print(reply.headers["Strict-Transport-Security"])
    print(reply.headers["Set-Cookie"].split(";", 1)[1])
"#;
    let run = Command::new(python)
        .args(["-c", sign_in, &format!("https://{console}"), &ca_file])
        .env("KEYRACK_ADMIN_TOKEN", served.dev_admin_token())
        .output()
        .unwrap();
    let report = text(&run.stdout);
    assert!(run.status.success(), "{report}{}", text(&run.stderr));
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.first(), Some(&"303"), "{report}");
    assert!(lines[1].starts_with("max-age="), "{report}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(lines[2].contains(attribute), "no {attribute}: {report}");
    }
    let (exit, logged) = served.terminate();
    assert!(exit.success(), "{logged}");
}
