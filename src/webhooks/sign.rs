//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! under each secret, space-separated, so a receiver holding any one secret of a
//! rotation verifies.

use base64::Engine;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2_hmac::Sha256>;

/// A secret that is not `whsec_<base64>` (config validation catches it first).
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is not whsec_<base64>")]
pub(crate) struct BadSecret;

/// Signs bodies with every configured secret.
#[derive(Clone)]
pub(crate) struct Signer {
    /// The decoded keys, the primary secret first.
    keys: Vec<Vec<u8>>,
}

impl Signer {
    /// Decodes `whsec_…` secrets.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Self, BadSecret> {
        let keys = secrets
            .into_iter()
            .map(|secret| {
                let encoded = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| BadSecret)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// The `webhook-signature` header value for this message.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| {
                // HMAC takes keys of any length: new_from_slice cannot fail for it.
                let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                let tag = mac.finalize().into_bytes();
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference libraries' test vector (standard-webhooks, `libraries/`).
    #[test]
    fn signs_the_specifications_vector() {
        let signer = Signer::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_space_separated() {
        let one = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let two = "whsec_c2Vjb25kLXNlY3JldC1vZi10d2VudHktZm91cg==";
        let both = Signer::new([one, two]).unwrap().sign("id", 1, b"{}");
        let first = Signer::new([one]).unwrap().sign("id", 1, b"{}");
        let second = Signer::new([two]).unwrap().sign("id", 1, b"{}");
        assert_eq!(both, format!("{first} {second}"));
        assert!(Signer::new(["nope"]).is_err());
    }
}
