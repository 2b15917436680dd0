//! Webhooks: every event of the audit log POSTed to one endpoint as JSON,
//! signed per the Standard Webhooks specification, at least once.
//!
//! Replicas share the work through a consumer group on the audit stream:
//! each event is taken by one replica, which retries it with backoff until
//! the endpoint accepts it and only then acknowledges it. A replica that
//! dies leaves its taken events pending; another claims them once they have
//! been idle for `claim_after`. A replica that is still retrying touches its
//! event before every attempt, so nobody claims it from under a live one.
//! Delivery runs in its own task: an endpoint that is down slows no call.

use crate::domain::{AuditEvent, UnixMillis};
use crate::metrics::metrics;
use crate::store::Store;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use opentelemetry_http::HttpClient as _;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The consumer group every replica delivers through.
const DELIVERY_GROUP: &str = "webhooks";
/// Events taken or claimed per store call.
const DELIVERY_BATCH: usize = 32;

/// A Standard Webhooks signing secret (`whsec_<base64>`), decoded.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// Parses `whsec_<base64 of 24 to 64 bytes>`, as Standard Webhooks
    /// libraries generate them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("a webhook secret starts with `whsec_` followed by base64")?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(encoded)
                .map_err(|_| "the part after `whsec_` is not base64")?,
        );
        if !(24..=64).contains(&bytes.len()) {
            return Err(
                "a webhook secret holds 24 to 64 bytes (e.g. 32 random bytes, base64)".into(),
            );
        }
        Ok(Self(bytes))
    }

    /// The `webhook-signature` value for one message: `v1,<base64 HMAC>`
    /// of `<id>.<timestamp>.<body>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// The endpoint: `http://` or `https://`.
    pub url: http::Uri,
    /// The certificate authorities an `https://` endpoint may present a
    /// chain to: the Mozilla roots, plus any added with
    /// [`WebhookOptions::trust_ca_pem`].
    pub trusted: Arc<rustls::RootCertStore>,
    /// The signing secret.
    pub secret: WebhookSecret,
    /// This replica's name in the consumer group (unique per process).
    pub consumer: String,
    /// How long an event may sit taken but unacknowledged before another
    /// replica claims it.
    pub claim_after: Duration,
    /// How often to look for new events when there were none.
    pub poll_interval: Duration,
    /// Longest one POST may take.
    pub request_timeout: Duration,
    /// The first retry's delay; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
}

impl WebhookOptions {
    /// Defaults for `url` and `secret`, with a random consumer name.
    pub fn new(url: http::Uri, secret: WebhookSecret) -> Self {
        Self {
            url,
            trusted: Arc::new(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            secret,
            consumer: format!("keyrack-{:016x}", rand::random::<u64>()),
            claim_after: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }

    /// Also trusts the certificate authorities in `pem` (e.g. a private CA
    /// an internal endpoint's certificate is issued by).
    pub fn trust_ca_pem(&mut self, pem: &[u8]) -> Result<(), String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certificates.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        let trusted = Arc::make_mut(&mut self.trusted);
        for certificate in certificates {
            trusted
                .add(certificate)
                .map_err(|e| format!("a certificate cannot be a trust anchor: {e}"))?;
        }
        Ok(())
    }
}

/// What webhooks are POSTed with: HTTP/1.1, over TLS (1.2 or 1.3, verified
/// against `WebhookOptions::trusted`) for an `https://` URL.
type WebhookClient = opentelemetry_http::hyper::HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

fn client_for(options: &WebhookOptions) -> Result<WebhookClient, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(&options.trusted))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector,
        options.request_timeout,
        None,
    ))
}

/// The JSON body of an event: `{type, timestamp, data}`, where `type` is
/// the event's kind as WatchEvents names it and `data` the event with its
/// cursor.
pub fn body_of(event: &AuditEvent) -> Vec<u8> {
    let kind = event.kind().name();
    let data = EventData::of(event);
    let time = std::time::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(event.time.0).unwrap_or_default());
    serde_json::to_vec(&serde_json::json!({
        "type": kind,
        "timestamp": humantime::format_rfc3339_millis(time).to_string(),
        "data": data,
    }))
    .unwrap_or_default()
}

/// An event as a webhook body's `data` carries it: this is the webhook
/// contract, written out here rather than borrowed from the domain type, so
/// that a change to `AuditEvent` cannot silently change what endpoints
/// receive. Members that do not apply to the event's kind are left out.
#[derive(serde::Serialize)]
struct EventData<'a> {
    time: i64,
    actor_identity_id: Option<&'a str>,
    actor_key_id: Option<&'a str>,
    action: &'a str,
    target_ids: &'a [String],
    outcome: &'a str,
    caller_address: Option<&'a str>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_time_seconds: Option<u64>,
    /// The event's id in the log, stable across retries and replicas.
    cursor: &'a str,
}

impl<'a> EventData<'a> {
    fn of(event: &'a AuditEvent) -> Self {
        Self {
            time: event.time.0,
            actor_identity_id: event.actor_identity_id.as_deref(),
            actor_key_id: event.actor_key_id.as_deref(),
            action: &event.action,
            target_ids: &event.target_ids,
            outcome: &event.outcome,
            caller_address: event.caller_address.as_deref(),
            request_id: &event.request_id,
            client_ip: event.client_ip.as_deref(),
            trace_id: event.trace_id.as_deref(),
            deadline: event.deadline.map(|deadline| deadline.0),
            lead_time_seconds: event.lead_time_seconds,
            cursor: &event.id,
        }
    }
}

/// Delivers events until the task is aborted (at shutdown; whatever was in
/// flight stays pending and is claimed later).
pub async fn deliver(store: Arc<dyn Store>, options: WebhookOptions) {
    let client = match client_for(&options) {
        Ok(client) => client,
        Err(error) => {
            // Only a TLS library without the default protocol versions
            // gets here; say so rather than retry forever.
            tracing::error!(%error, "webhooks are not delivered: no TLS client");
            return;
        }
    };
    tracing::info!(url = %options.url, consumer = %options.consumer, "delivering events to the webhook");
    loop {
        let batch = match next_batch(store.as_ref(), &options).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "could not read events to deliver");
                tokio::time::sleep(options.poll_interval).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::time::sleep(options.poll_interval).await;
            continue;
        }
        for index in 0..batch.len() {
            deliver_one(store.as_ref(), &client, &options, &batch[index..]).await;
        }
    }
}

/// What a dead replica left idle, else what nobody took yet.
async fn next_batch(
    store: &dyn Store,
    options: &WebhookOptions,
) -> Result<Vec<AuditEvent>, crate::store::StoreError> {
    let claimed = store
        .claim_deliveries(
            DELIVERY_GROUP,
            &options.consumer,
            options.claim_after,
            DELIVERY_BATCH,
        )
        .await?;
    if !claimed.is_empty() {
        tracing::info!(
            events = claimed.len(),
            "claimed events another replica left undelivered"
        );
        return Ok(claimed);
    }
    store
        .take_deliveries(DELIVERY_GROUP, &options.consumer, DELIVERY_BATCH)
        .await
}

/// POSTs the first of `waiting` until the endpoint accepts it (2xx), then
/// acknowledges it; the others wait their turn, held by this replica.
async fn deliver_one(
    store: &dyn Store,
    client: &WebhookClient,
    options: &WebhookOptions,
    waiting: &[AuditEvent],
) {
    let event = &waiting[0];
    let body = bytes::Bytes::from(body_of(event));
    let mut backoff = options.min_backoff;
    loop {
        let timestamp = UnixMillis::now().0 / 1000;
        let request = http::Request::post(options.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp)
            .header(
                "webhook-signature",
                options.secret.sign(&event.id, timestamp, &body),
            )
            .body(body.clone());
        let outcome = match request {
            Ok(request) => match client.send_bytes(request).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("the endpoint answered {}", response.status())),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                metrics().webhook_deliveries.inc();
                acknowledge(store, options, &event.id).await;
                return;
            }
            Err(why) => {
                metrics().webhook_failures.inc();
                tracing::warn!(event = %event.id, url = %options.url, %why, retry_in = ?backoff, "webhook delivery failed");
            }
        }
        hold_while_waiting(store, options, waiting, backoff).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Waits `delay` before a retry, touching the waiting events often enough
/// (three times per `claim_after`) that no other replica claims them from
/// this live one, however long the backoff has grown.
async fn hold_while_waiting(
    store: &dyn Store,
    options: &WebhookOptions,
    waiting: &[AuditEvent],
    delay: Duration,
) {
    let ids: Vec<&str> = waiting.iter().map(|event| event.id.as_str()).collect();
    let step = (options.claim_after / 3).max(Duration::from_millis(10));
    let mut left = delay;
    while !left.is_zero() {
        let nap = left.min(step);
        tokio::time::sleep(nap).await;
        left -= nap;
        if let Err(error) = store
            .touch_deliveries(DELIVERY_GROUP, &options.consumer, &ids)
            .await
        {
            tracing::debug!(%error, "could not keep hold of events waiting for a retry");
        }
    }
}

/// Acknowledges a delivered event, retrying while the store is away: an
/// event left pending would be delivered again once claimed.
async fn acknowledge(store: &dyn Store, options: &WebhookOptions, id: &str) {
    while let Err(error) = store.ack_delivery(DELIVERY_GROUP, id).await {
        tracing::warn!(%error, event = %id, "could not acknowledge a delivered event");
        tokio::time::sleep(options.poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert_eq!(format!("{secret:?}"), "WebhookSecret([redacted])");
    }
}
