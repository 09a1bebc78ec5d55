//! Where a webhook may point: `http` or `https` URLs of a bounded length,
//! without credentials, whose addresses are public. Loopback, private,
//! link-local (the cloud metadata services among them), carrier-grade NAT,
//! unspecified, broadcast and multicast ranges are refused unless the
//! operator allows them (`--webhook-allow-private`). A literal address is
//! checked when the job is submitted; a host name is checked by the
//! resolver the dispatcher connects through ([`GuardedResolver`]), on every
//! call, so a name that later resolves to a refused address (DNS
//! rebinding) is refused at delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest webhook URL accepted, in bytes.
pub(crate) const MAX_URL_BYTES: usize = 2048;

/// Why a URL is not a webhook destination, as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "webhook must be an absolute http or https URL of at most {MAX_URL_BYTES} bytes, without credentials"
    )]
    Invalid,
    #[error(
        "webhook destination is in a loopback, private, link-local or otherwise internal address range"
    )]
    Internal,
}

/// `url` parsed, if it may be a webhook destination.
pub(crate) fn check_url(url: &str, allow_private: bool) -> Result<Url, Refusal> {
    if url.len() > MAX_URL_BYTES {
        return Err(Refusal::Invalid);
    }
    let parsed = Url::parse(url).map_err(|_| Refusal::Invalid)?;
    if !matches!(parsed.scheme(), "http" | "https")
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(Refusal::Invalid);
    }
    match parsed.host() {
        None => Err(Refusal::Invalid),
        Some(url::Host::Domain(_)) => Ok(parsed),
        Some(url::Host::Ipv4(ip)) => allowed(IpAddr::V4(ip), allow_private)
            .then_some(parsed)
            .ok_or(Refusal::Internal),
        Some(url::Host::Ipv6(ip)) => allowed(IpAddr::V6(ip), allow_private)
            .then_some(parsed)
            .ok_or(Refusal::Internal),
    }
}

/// Whether a call may connect to `ip`.
pub(crate) fn allowed(ip: IpAddr, allow_private: bool) -> bool {
    allow_private || !internal(ip)
}

fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // "This network", carrier-grade NAT (Alibaba's metadata service is
        // 100.100.100.200), benchmarking, reserved.
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local (fc00::/7, AWS's fd00:ec2::254 among them) and
        // link-local (fe80::/10).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// The dispatcher's resolver: the system's answer, without the addresses
/// a call may not reach; an error when none is left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allowed(a.ip(), allow_private))
                .collect();
            if found.is_empty() {
                return Err(Box::new(Refusal::Internal) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_refused_and_public_ones_pass() {
        for url in [
            "http://127.0.0.1/h",
            "http://10.1.2.3/h",
            "http://172.16.0.1/h",
            "http://192.168.1.1/h",
            "http://169.254.169.254/latest/meta-data",
            "http://100.100.100.200/",
            "http://0.0.0.0/",
            "http://[::1]/h",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert_eq!(check_url(url, false), Err(Refusal::Internal), "{url}");
            assert!(check_url(url, true).is_ok(), "{url}");
        }
        for url in [
            "https://93.184.216.34/h",
            "https://example.com/hook",
            "http://[2606:4700::1]/",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn only_plain_http_urls_without_credentials_are_destinations() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "not a url",
            "/relative",
        ] {
            assert_eq!(check_url(url, true), Err(Refusal::Invalid), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(check_url(&long, true), Err(Refusal::Invalid));
    }
}
