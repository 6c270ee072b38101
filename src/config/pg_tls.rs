//! TLS to PostgreSQL, as libpq spells it in the URL: `sslmode` and `sslrootcert`
//! (issue 15). The pure part — what the URL asks for — lives here, beside the other
//! config rules, so `reportd config check` refuses a bad value; `db::tls` turns the
//! answer into a rustls connector.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and refuses any parameter
//! it does not know (`sslrootcert`), so the two are taken out of the URL here and the
//! rest is handed to it unchanged.

use std::path::PathBuf;

/// How a connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain TCP (the default when the URL says nothing, as reportd always did).
    Disable,
    /// TLS, without checking the server's certificate (protects against eavesdropping,
    /// not against an impostor).
    Require,
    /// TLS, the certificate chain checked against the CA, the host name not.
    VerifyCa,
    /// TLS, the chain checked and the certificate valid for the host connected to.
    VerifyFull,
}

/// Where the trusted CA certificates come from, for `verify-ca` and `verify-full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// The system's store (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// A PEM file of one or more CA certificates (RDS's bundle, Cloud SQL's server CA).
    File(PathBuf),
}

/// What a database URL asks for: its TLS mode, and the URL without the parameters that
/// tokio-postgres does not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTarget {
    /// The TLS mode.
    pub(crate) mode: SslMode,
    /// The trusted CAs (read only by the verifying modes).
    pub(crate) roots: RootCerts,
    /// The URL without `sslmode` and `sslrootcert`; every other byte as written.
    pub(crate) url: String,
}

/// Why the URL's TLS settings are refused. Never carries the URL (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PgTlsError {
    /// An `sslmode` reportd does not know.
    #[error("unknown sslmode `{0}` (use disable, require, verify-ca or verify-full)")]
    UnknownMode(String),
    /// `prefer` or `allow`: both fall back to plain TCP without a word.
    #[error(
        "sslmode `{0}` is not supported: it silently falls back to an unencrypted \
         connection; say `require` (or `verify-full`) or `disable`"
    )]
    Fallback(String),
    /// `sslrootcert` given to a mode that never reads it.
    #[error("sslrootcert is only read by sslmode=verify-ca or verify-full, not `{0}`")]
    RootCertUnused(&'static str),
    /// A libpq TLS parameter reportd does not implement (client certificates, CRLs).
    #[error("`{0}` is not supported (no client certificates or CRLs)")]
    Unsupported(String),
}

/// libpq parameters about TLS that reportd does not implement: refused by name rather
/// than left for tokio-postgres to call "unknown option".
const UNSUPPORTED: &[&str] = &["sslcert", "sslkey", "sslcrl", "sslcrldir"];

/// Reads `sslmode` and `sslrootcert` out of a `postgres://` URL.
pub(crate) fn parse_pg_url(raw: &str) -> Result<PgTarget, PgTlsError> {
    let (base, query) = match raw.split_once('?') {
        Some((base, query)) => (base, query),
        None => (raw, ""),
    };
    let mut mode_text = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match name {
            "sslmode" => mode_text = Some(value),
            "sslrootcert" => root = Some(value),
            // Only unlocks an `sslkey`, which is refused; tokio-postgres would call it unknown.
            "sslpassword" => {}
            _ if UNSUPPORTED.contains(&name) => {
                return Err(PgTlsError::Unsupported(name.to_string()))
            }
            _ => kept.push(pair),
        }
    }
    let mode = match mode_text.as_deref() {
        None | Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(fallback @ ("prefer" | "allow")) => {
            return Err(PgTlsError::Fallback(fallback.to_string()))
        }
        Some(other) => return Err(PgTlsError::UnknownMode(other.to_string())),
    };
    let roots = match (mode, root) {
        (_, None) => RootCerts::System,
        (SslMode::Disable, Some(_)) => return Err(PgTlsError::RootCertUnused("disable")),
        (SslMode::Require, Some(_)) => return Err(PgTlsError::RootCertUnused("require")),
        (_, Some(system)) if system == "system" => RootCerts::System,
        (_, Some(path)) => RootCerts::File(PathBuf::from(path)),
    };
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(PgTarget { mode, roots, url })
}

/// A query value percent-decoded (a path with spaces or `&` arrives encoded).
fn decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", value.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sslmode_is_plain_tcp_and_the_url_is_untouched() {
        let raw = "postgres://app:pw@db:5432/reports?application_name=x";
        let target = parse_pg_url(raw).unwrap();
        assert_eq!(target.mode, SslMode::Disable);
        assert_eq!(target.url, raw);
    }

    #[test]
    fn verify_full_with_a_ca_file_is_taken_out_of_the_url() {
        let target = parse_pg_url(
            "postgres://app@db/r?connect_timeout=5&sslmode=verify-full&sslrootcert=/etc/ca%20x.pem",
        )
        .unwrap();
        assert_eq!(target.mode, SslMode::VerifyFull);
        assert_eq!(target.roots, RootCerts::File("/etc/ca x.pem".into()));
        assert_eq!(target.url, "postgres://app@db/r?connect_timeout=5");
    }

    #[test]
    fn other_parameters_keep_their_bytes() {
        let target = parse_pg_url("postgres://h/d?sslmode=require&options=-c%20a%3D1+b").unwrap();
        assert_eq!(target.mode, SslMode::Require);
        assert_eq!(target.url, "postgres://h/d?options=-c%20a%3D1+b");
    }

    #[test]
    fn verifying_modes_without_a_file_use_the_system_store() {
        for raw in [
            "postgres://h/d?sslmode=verify-ca",
            "postgres://h/d?sslmode=verify-full&sslrootcert=system",
        ] {
            assert_eq!(parse_pg_url(raw).unwrap().roots, RootCerts::System, "{raw}");
        }
    }

    #[test]
    fn prefer_and_allow_are_refused_because_they_fall_back_silently() {
        for mode in ["prefer", "allow"] {
            let error = parse_pg_url(&format!("postgres://h/d?sslmode={mode}")).unwrap_err();
            assert_eq!(error, PgTlsError::Fallback(mode.into()));
        }
    }

    #[test]
    fn an_unknown_mode_is_named_and_the_password_is_not() {
        let error = parse_pg_url("postgres://app:hunter2@h/d?sslmode=verify-fool").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("verify-fool"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_root_cert_that_would_be_ignored_is_refused() {
        let error = parse_pg_url("postgres://h/d?sslmode=require&sslrootcert=/ca.pem").unwrap_err();
        assert_eq!(error, PgTlsError::RootCertUnused("require"));
        let error = parse_pg_url("postgres://h/d?sslrootcert=/ca.pem").unwrap_err();
        assert_eq!(error, PgTlsError::RootCertUnused("disable"));
    }

    #[test]
    fn client_certificates_are_refused_by_name() {
        let error = parse_pg_url("postgres://h/d?sslmode=require&sslkey=/k.pem").unwrap_err();
        assert_eq!(error, PgTlsError::Unsupported("sslkey".into()));
        let target = parse_pg_url("postgres://h/d?sslpassword=x&application_name=a").unwrap();
        assert_eq!(target.url, "postgres://h/d?application_name=a");
    }
}
