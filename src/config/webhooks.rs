//! `[webhooks]`: signed completion webhooks (issue 13). Its own file beside `config.rs`
//! so the section's settings, defaults and checks sit together.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[webhooks]`: where finished reports are announced and how deliveries are retried.
/// Nothing is sent, swept or written while no secret is set: webhooks are off.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The signing secret, `whsec_<base64>` (Standard Webhooks). Setting it (or
    /// `secrets`) turns webhooks on.
    pub secret: Option<String>,
    /// More secrets for rotation: every delivery is signed with `secret` and each of
    /// these (space-separated signatures), so receivers may hold either.
    pub secrets: Vec<String>,
    /// Fleet-wide endpoints that get every report's events, besides a submission's own
    /// `callbackUrl`.
    pub endpoints: Vec<String>,
    /// Accept `http://` URLs (tests, internal receivers); otherwise https only.
    pub allow_http: bool,
    /// Accept hosts that resolve to loopback, private, link-local, CGNAT or metadata
    /// addresses (tests); off, they are refused at submission and at delivery.
    pub allow_private: bool,
    /// When non-empty, the only hosts a webhook may go to (exact names, case-insensitive).
    pub allowed_hosts: Vec<String>,
    /// Milliseconds one delivery attempt may take (connect, send, answer).
    pub timeout_ms: u64,
    /// Seconds a delivery is retried after it was recorded before it is given up.
    pub retry_for_s: u64,
    /// Milliseconds before the first retry; each later wait doubles (with jitter), up to
    /// an hour.
    pub first_retry_ms: u64,
    /// Milliseconds between looks for finished reports and due deliveries.
    pub poll_ms: u64,
    /// Deliveries one process sends at once.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret: None,
            secrets: Vec::new(),
            endpoints: Vec::new(),
            allow_http: false,
            allow_private: false,
            allowed_hosts: Vec::new(),
            timeout_ms: 10_000,
            retry_for_s: 86_400,
            first_retry_ms: 5_000,
            poll_ms: 1_000,
            concurrency: 16,
        }
    }
}

/// Secrets never print, not even in debug output.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("endpoints", &self.endpoints)
            .field("allow_http", &self.allow_http)
            .field("allow_private", &self.allow_private)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_for_s", &self.retry_for_s)
            .field("first_retry_ms", &self.first_retry_ms)
            .field("poll_ms", &self.poll_ms)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Longest `webhooks.timeout_ms`: a receiver slower than a minute is a receiver down.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Longest `webhooks.retry_for_s`: 30 days.
const MAX_RETRY_FOR_S: u64 = 30 * 86_400;

impl WebhookSettings {
    /// Whether webhooks are on: a signing secret is set.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || !self.secrets.is_empty()
    }

    /// Every signing secret, `secret` first.
    pub fn all_secrets(&self) -> impl Iterator<Item = &str> {
        self.secret.iter().chain(&self.secrets).map(String::as_str)
    }

    /// The section's checks; each error names the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if let Some(secret) = &self.secret {
            if let Err(reason) = check_secret(secret) {
                return invalid("webhooks.secret", reason);
            }
        }
        if let Some(reason) = self.secrets.iter().find_map(|s| check_secret(s).err()) {
            return invalid("webhooks.secrets", reason);
        }
        if !self.endpoints.is_empty() && !self.enabled() {
            return invalid(
                "webhooks.endpoints",
                "endpoints need a signing secret (webhooks.secret)".into(),
            );
        }
        for endpoint in &self.endpoints {
            if let Err(reason) = check_url(endpoint, self.allow_http) {
                return invalid("webhooks.endpoints", format!("`{endpoint}`: {reason}"));
            }
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return invalid(
                "webhooks.timeout_ms",
                format!("{} is outside 1..={MAX_TIMEOUT_MS}", self.timeout_ms),
            );
        }
        if !(1..=MAX_RETRY_FOR_S).contains(&self.retry_for_s) {
            return invalid(
                "webhooks.retry_for_s",
                format!("{} is outside 1..={MAX_RETRY_FOR_S}", self.retry_for_s),
            );
        }
        self.validate_pacing()
    }

    fn validate_pacing(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !(1..=3_600_000).contains(&self.first_retry_ms) {
            return invalid(
                "webhooks.first_retry_ms",
                format!("{} is outside 1..=3600000", self.first_retry_ms),
            );
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return invalid(
                "webhooks.poll_ms",
                format!("{} is outside 10..=60000", self.poll_ms),
            );
        }
        if !(1..=256).contains(&self.concurrency) {
            return invalid(
                "webhooks.concurrency",
                format!("{} is outside 1..=256", self.concurrency),
            );
        }
        if self.allowed_hosts.iter().any(|h| h.trim().is_empty()) {
            return invalid("webhooks.allowed_hosts", "a host must not be empty".into());
        }
        Ok(())
    }
}

/// A Standard Webhooks secret: `whsec_` and base64 of at least 24 bytes (the spec asks
/// for 24 to 64). The error never repeats the secret.
pub(crate) fn check_secret(secret: &str) -> Result<(), String> {
    use base64::Engine;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("a secret must look like whsec_<base64>".into());
    };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if (24..=64).contains(&key.len()) => Ok(()),
        Ok(key) => Err(format!(
            "a secret must hold 24 to 64 bytes after whsec_, this one holds {}",
            key.len()
        )),
        Err(_) => Err("the part after whsec_ is not valid base64".into()),
    }
}

/// A webhook URL: absolute, https (or http when allowed), a host, no credentials.
pub(crate) fn check_url(raw: &str, allow_http: bool) -> Result<url::Url, String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("must be https (http needs webhooks.allow_http)".into()),
        other => return Err(format!("scheme `{other}` is not https")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        assert!(check_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(check_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(check_secret("whsec_not base64!").is_err());
        assert!(check_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn urls_must_be_https_unless_http_is_allowed() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://example.com/hook", false).is_err());
        assert!(check_url("http://example.com/hook", true).is_ok());
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("https://u:p@example.com/", false).is_err());
        assert!(check_url("not a url", true).is_err());
    }

    fn key_of(toml: &str) -> Option<&'static str> {
        match super::super::Settings::from_toml_str(toml, &Default::default()) {
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn validation_names_the_key_at_fault() {
        let secret = "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let cases = [
            ("secret = \"hunter2\"\n".to_string(), "webhooks.secret"),
            (
                format!("{secret}secrets = [\"nope\"]\n"),
                "webhooks.secrets",
            ),
            (
                "endpoints = [\"https://a.example/\"]\n".into(),
                "webhooks.endpoints",
            ),
            (
                format!("{secret}endpoints = [\"http://a.example/\"]\n"),
                "webhooks.endpoints",
            ),
            (
                format!("{secret}endpoints = [\"not a url\"]\n"),
                "webhooks.endpoints",
            ),
            (format!("{secret}timeout_ms = 0\n"), "webhooks.timeout_ms"),
            (format!("{secret}retry_for_s = 0\n"), "webhooks.retry_for_s"),
            (
                format!("{secret}first_retry_ms = 0\n"),
                "webhooks.first_retry_ms",
            ),
            (format!("{secret}poll_ms = 0\n"), "webhooks.poll_ms"),
            (format!("{secret}concurrency = 0\n"), "webhooks.concurrency"),
            (
                format!("{secret}allowed_hosts = [\" \"]\n"),
                "webhooks.allowed_hosts",
            ),
        ];
        for (body, key) in cases {
            assert_eq!(key_of(&format!("[webhooks]\n{body}")), Some(key), "{body}");
        }
        let ok = format!("[webhooks]\n{secret}endpoints = [\"https://a.example/hook\"]\n");
        assert_eq!(key_of(&ok), None);
    }

    #[test]
    fn secrets_never_print() {
        let settings = WebhookSettings {
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            secrets: vec!["whsec_c2Vjb25kLXNlY3JldC1vZi10d2VudHktZm91cg==".into()],
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("MfKQ") && !shown.contains("c2Vj"),
            "{shown}"
        );
        let all = super::super::Settings {
            webhooks: settings,
            ..Default::default()
        };
        let toml = all.to_redacted_toml();
        assert!(!toml.contains("MfKQ") && !toml.contains("c2Vj"), "{toml}");
    }
}
