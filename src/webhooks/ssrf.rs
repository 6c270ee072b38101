//! SSRF protection: a webhook may only go to a public address (unless
//! `[webhooks] allow_private`), and only to `allowed_hosts` when that list is set.
//!
//! A host is checked when a submission names it (so a bad `callbackUrl` is a 400) and
//! again at every delivery, inside the HTTP client's resolver: the connection goes to
//! exactly the addresses that passed the check, so a DNS answer that changes between
//! the check and the connect (rebinding) cannot slip through.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use crate::config::WebhookSettings;

/// Why a webhook URL is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SsrfError {
    /// Not an acceptable URL (scheme, host, credentials).
    #[error("{0}")]
    BadUrl(String),
    /// Not in `[webhooks] allowed_hosts`.
    #[error("host `{0}` is not in webhooks.allowed_hosts")]
    NotAllowed(String),
    /// The name does not resolve (retryable at delivery).
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's reason.
        reason: String,
    },
    /// It resolves to an address webhooks may not reach.
    #[error(
        "host `{host}` resolves to {addr}, a loopback, private, link-local or metadata address"
    )]
    Private {
        /// The host name.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
}

/// Whether webhooks must not go to `ip`: loopback, unspecified, private (RFC 1918,
/// ULA fc00::/7), link-local (which holds the cloud metadata address 169.254.169.254),
/// CGNAT 100.64/10, AWS's IPv6 metadata fd00:ec2::254 (inside the ULA range), broadcast,
/// multicast and the documentation/benchmark ranges. IPv4-mapped IPv6 addresses are
/// judged as the IPv4 address they carry.
pub(crate) fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240 // reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // ULA fc00::/7 (fd00:ec2::254 is in it)
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || ip.to_ipv4().is_some_and(|v4| ip.segments()[..6] == [0; 6] && is_forbidden_v4(v4)) // IPv4-compatible ::a.b.c.d
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 well-known prefix
}

/// The rules `[webhooks]` sets for where webhooks may go.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    allow_http: bool,
    allow_private: bool,
    /// Lower-cased; empty = any host.
    allowed_hosts: Arc<Vec<String>>,
}

impl HostPolicy {
    /// The policy of `[webhooks]`.
    pub(crate) fn new(settings: &WebhookSettings) -> Self {
        Self {
            allow_http: settings.allow_http,
            allow_private: settings.allow_private,
            allowed_hosts: Arc::new(
                settings
                    .allowed_hosts
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect(),
            ),
        }
    }

    /// The URL's form, its host against the allowlist, and every address it resolves
    /// to (or the literal it is).
    pub(crate) async fn check(&self, raw: &str) -> Result<url::Url, SsrfError> {
        let url = self.check_form(raw)?;
        if let Some(host) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            match host {
                url::Host::Domain(name) => {
                    self.resolve(name, port).await?;
                }
                url::Host::Ipv4(ip) => self.check_ip(&ip.to_string(), ip.into())?,
                url::Host::Ipv6(ip) => self.check_ip(&ip.to_string(), ip.into())?,
            }
        }
        Ok(url)
    }

    /// Everything but resolution: scheme, host, allowlist, and an address literal. The
    /// delivery path calls this, then lets the client's resolver check names.
    pub(crate) fn check_form(&self, raw: &str) -> Result<url::Url, SsrfError> {
        let url =
            crate::config::check_webhook_url(raw, self.allow_http).map_err(SsrfError::BadUrl)?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.check_ip(&ip.to_string(), ip.into())?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_ip(&ip.to_string(), ip.into())?;
                ip.to_string()
            }
            None => return Err(SsrfError::BadUrl("has no host".into())),
        };
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.contains(&host) {
            return Err(SsrfError::NotAllowed(host));
        }
        Ok(url)
    }

    fn check_ip(&self, host: &str, addr: IpAddr) -> Result<(), SsrfError> {
        if !self.allow_private && is_forbidden(addr) {
            return Err(SsrfError::Private {
                host: host.to_string(),
                addr,
            });
        }
        Ok(())
    }

    /// The addresses `host` resolves to, all of them allowed (one forbidden address
    /// refuses the host: a client could otherwise be steered to it).
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, SsrfError> {
        let resolve_error = |reason: String| SsrfError::Resolve {
            host: host.to_string(),
            reason,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| resolve_error(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(resolve_error("no addresses".into()));
        }
        for addr in &addrs {
            self.check_ip(host, addr.ip())?;
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: [`HostPolicy::resolve`], so a delivery connects only to
/// addresses checked at that moment.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: HostPolicy,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = SsrfError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, SsrfError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SsrfError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            // The connector puts the URL's port on the addresses itself.
            let addrs = policy.resolve(name.as_str(), 0).await?;
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(raw: &str) -> bool {
        is_forbidden(raw.parse().unwrap())
    }

    #[test]
    fn private_loopback_link_local_cgnat_and_metadata_addresses_are_forbidden() {
        for raw in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "ff02::1",
        ] {
            assert!(forbidden(raw), "{raw} allowed");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for raw in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(raw), "{raw} refused");
        }
    }

    fn policy(allow_private: bool, hosts: &[&str]) -> HostPolicy {
        HostPolicy::new(&WebhookSettings {
            allow_http: true,
            allow_private,
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn loopback_hosts_are_refused_unless_private_addresses_are_allowed() {
        let strict = policy(false, &[]);
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
            "http://0.0.0.0:9/x",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(strict.check(url).await.is_err(), "{url} accepted");
        }
        assert!(policy(true, &[])
            .check("http://127.0.0.1:9/x")
            .await
            .is_ok());
    }

    #[test]
    fn the_allowlist_names_the_only_hosts() {
        let listed = policy(true, &["Hooks.Example.com"]);
        assert!(listed.check_form("https://hooks.example.com/a").is_ok());
        assert!(matches!(
            listed.check_form("https://other.example.com/a"),
            Err(SsrfError::NotAllowed(_))
        ));
    }
}
