//! The console's session cookie and CSRF tokens: HMAC-SHA256 signed values, no server-side
//! state. The key is random per process, so signing in again is needed after a restart
//! (and on another api process), and no secret has to be configured or stored.

use std::sync::OnceLock;

use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::RngCore;

use crate::config::TokenRole;

type HmacSha256 = hmac::Hmac<sha2_hmac::Sha256>;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "reportd_console";

/// How long a session lasts, in seconds (12 h: one working day on a second screen).
pub(crate) const SESSION_TTL_S: i64 = 12 * 3600;

/// Who is looking at the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewer {
    /// The token's name (logged with every action), or `anonymous` without tokens.
    pub(crate) name: String,
    /// What the viewer may do.
    pub(crate) role: TokenRole,
    /// The session cookie's value, or `None` for an anonymous viewer; CSRF tokens are
    /// bound to it, so a token from one session is worthless in another.
    pub(crate) session: Option<String>,
}

impl Viewer {
    /// Whether the viewer may act (retry, cancel, redrive, discard).
    pub(crate) fn is_admin(&self) -> bool {
        self.role == TokenRole::Admin
    }

    /// The CSRF token every state-changing form of this viewer carries.
    pub(crate) fn csrf(&self) -> String {
        sign(&format!(
            "csrf|{}",
            self.session.as_deref().unwrap_or("anonymous")
        ))
    }

    /// Whether `presented` is this viewer's CSRF token (constant-time comparison).
    pub(crate) fn csrf_matches(&self, presented: &str) -> bool {
        let expected = self.csrf();
        expected.len() == presented.len()
            && expected
                .bytes()
                .zip(presented.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// This process's signing key, drawn once.
fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    })
}

/// The hex HMAC of `text` under this process's key.
fn sign(text: &str) -> String {
    // A 32-byte key is always a valid HMAC key; `new_from_slice` fails only on lengths
    // the algorithm cannot take, which HMAC has none of.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key())
        .unwrap_or_else(|_| unreachable!("HMAC accepts a key of any length"));
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A new session cookie value for `name` with `role`, valid until `now + SESSION_TTL_S`:
/// `v1.<role>.<expiry>.<name, base64url>.<hmac>`.
pub(crate) fn issue(name: &str, role: TokenRole, now: i64) -> String {
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name);
    let body = format!("v1.{}.{}.{}", role.as_str(), now + SESSION_TTL_S, name);
    let signature = sign(&body);
    format!("{body}.{signature}")
}

/// The viewer a cookie value stands for, if it is signed by this process and unexpired.
pub(crate) fn verify(value: &str, now: i64) -> Option<Viewer> {
    let (body, signature) = value.rsplit_once('.')?;
    let expected = sign(body);
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return None;
    }
    let mut parts = body.split('.');
    let (Some("v1"), Some(role), Some(expiry), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let role = match role {
        "admin" => TokenRole::Admin,
        "read" => TokenRole::Read,
        _ => return None,
    };
    if expiry.parse::<i64>().ok()? <= now {
        return None;
    }
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(name)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())?;
    Some(Viewer {
        name,
        role,
        session: Some(value.to_string()),
    })
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_session_verifies_until_it_expires() {
        let value = issue("ops", TokenRole::Read, 1000);
        let viewer = verify(&value, 1001).expect("valid");
        assert_eq!(viewer.name, "ops");
        assert_eq!(viewer.role, TokenRole::Read);
        assert!(verify(&value, 1000 + SESSION_TTL_S).is_none());
    }

    #[test]
    fn a_tampered_session_is_refused() {
        let value = issue("ops", TokenRole::Read, 1000);
        let forged = value.replacen(".read.", ".admin.", 1);
        assert!(verify(&forged, 1001).is_none());
        assert!(verify("v1.admin.99999999999.b3Bz.00", 1001).is_none());
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let a = verify(&issue("a", TokenRole::Admin, 0), 1).expect("valid");
        let b = verify(&issue("b", TokenRole::Admin, 0), 1).expect("valid");
        assert!(a.csrf_matches(&a.csrf()));
        assert!(!a.csrf_matches(&b.csrf()));
        assert!(!a.csrf_matches(""));
    }

    #[test]
    fn cookie_values_are_found_by_name() {
        assert_eq!(
            cookie_value("a=1; reportd_console=x.y", COOKIE),
            Some("x.y")
        );
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }
}
