//! One delivery attempt: sign, POST with a bounded timeout, and decide what the answer
//! means for the row (a pure rule, unit-tested).

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ssrf::{GuardedResolver, HostPolicy};
use crate::db::webhooks::DeliveryUpdate;

/// Longest wait between two tries: later retries come at least hourly.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the webhook HTTP client: {0}")]
pub(crate) struct ClientError(String);

/// Why an attempt got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The URL or its addresses are refused ([`HostPolicy`]).
    #[error("refused: {0}")]
    Refused(#[from] super::ssrf::SsrfError),
    /// Connecting or sending failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No answer within `webhooks.timeout_ms`.
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The webhook HTTP client: hyper 1 over rustls (the stack the AWS SDK already builds),
/// resolving through the SSRF guard.
#[derive(Clone)]
pub(crate) struct WebhookClient {
    client: Client<Connector, Full<Bytes>>,
    policy: HostPolicy,
    timeout: Duration,
}

impl WebhookClient {
    /// A client with the system's root certificates.
    pub(crate) fn new(policy: HostPolicy, timeout: Duration) -> Result<Self, ClientError> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        // Certificates the system store cannot parse are skipped, as browsers do.
        let (_added, _skipped) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            client,
            policy,
            timeout,
        })
    }

    /// POSTs `body` with the signature headers; the answer's status code.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, PostError> {
        // Names are checked by the resolver; an address literal never reaches it.
        self.policy.check_form(url)?;
        let mut request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("reportd/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| PostError::Request(e.to_string()))?;
        let millis = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(PostError::Timeout(millis)),
            Ok(Err(e)) => Err(PostError::Request(error_chain(&e))),
            Ok(Ok(answer)) => Ok(answer.status().as_u16()),
        }
    }
}

/// An error with its sources (hyper's own text is only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait before try `attempt + 1` after `attempt` failed: `first` doubled per try,
/// at most an hour, times `jitter` (0.8..1.2 in production, so receivers that came back
/// are not hit by every delivery at once).
pub(crate) fn backoff(first: Duration, attempt: i32, jitter: f64) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let wait = first
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_BACKOFF);
    wait.mul_f64(jitter.clamp(0.5, 1.5))
}

/// What try number `attempt` (the answer's status, or why none came) means for the row:
/// 2xx delivered, 410 stopped, anything else retried until `retry_until`, then given up.
pub(crate) fn decide(
    answer: Result<u16, String>,
    attempt: i32,
    now: DateTime<Utc>,
    retry_until: DateTime<Utc>,
    first_retry: Duration,
    jitter: f64,
) -> DeliveryUpdate {
    let (status, error) = match answer {
        Ok(code @ 200..=299) => {
            return DeliveryUpdate::Delivered {
                status: code.into(),
            }
        }
        Ok(410) => return DeliveryUpdate::Stopped { status: 410 },
        Ok(code) => (
            Some(i32::from(code)),
            format!("the receiver answered {code}"),
        ),
        Err(reason) => (None, reason),
    };
    let wait = backoff(first_retry, attempt, jitter);
    let next = chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| now.checked_add_signed(wait));
    match next {
        Some(next) if next <= retry_until => DeliveryUpdate::Retry {
            status,
            error,
            next,
        },
        _ => DeliveryUpdate::GaveUp { status, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_per_try_up_to_an_hour() {
        let first = Duration::from_secs(5);
        assert_eq!(backoff(first, 1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(first, 2, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(first, 5, 1.0), Duration::from_secs(80));
        assert_eq!(backoff(first, 20, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(first, 1000, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(first, 1, 1.2), Duration::from_secs(6));
    }

    #[test]
    fn answers_map_to_delivered_stopped_retry_or_gave_up() {
        let now = Utc::now();
        let day = now + chrono::Duration::days(1);
        let first = Duration::from_secs(5);
        assert_eq!(
            decide(Ok(204), 1, now, day, first, 1.0),
            DeliveryUpdate::Delivered { status: 204 }
        );
        assert_eq!(
            decide(Ok(410), 3, now, day, first, 1.0),
            DeliveryUpdate::Stopped { status: 410 }
        );
        assert_eq!(
            decide(Ok(500), 1, now, day, first, 1.0),
            DeliveryUpdate::Retry {
                status: Some(500),
                error: "the receiver answered 500".into(),
                next: now + chrono::Duration::seconds(5),
            }
        );
        assert!(matches!(
            decide(Err("timeout".into()), 1, now, now, first, 1.0),
            DeliveryUpdate::GaveUp { status: None, .. }
        ));
    }
}
