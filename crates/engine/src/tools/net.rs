//! Where `http_request` may connect: host allow-lists, and the addresses refused unless a tool
//! names them (loopback, private, link-local, cloud metadata, unspecified, multicast …). The
//! check is made on the *resolved* address, by the client's resolver, so a name that resolves to
//! a private address (or a DNS answer changed between check and use) does not pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A tool's allowances: which hosts, and which of them may be internal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Allow {
    /// Empty: any public host.
    hosts: Vec<String>,
    /// Internal addresses are refused even for a named host.
    deny_internal: bool,
}

impl Allow {
    pub fn new(hosts: &[String], deny_internal: bool) -> Allow {
        Allow { hosts: hosts.iter().map(|h| normal(h)).collect(), deny_internal }
    }

    /// Whether the host may be asked at all.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = normal(host);
        self.hosts.is_empty() || self.hosts.iter().any(|pattern| matches(pattern, &host))
    }

    /// Whether the host was named exactly (so it may resolve to an internal address); a
    /// wildcard does not give that permission.
    fn named(&self, host: &str) -> bool {
        let host = normal(host);
        self.hosts.contains(&host)
    }

    /// `Ok` if `host` (as the URL names it) may connect to `addr`; else why not.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), String> {
        match internal(addr) {
            Some(what) if self.deny_internal => Err(format!(
                "{host} resolves to {addr}, {what}; refused (a workflow's own tools never reach internal addresses)"
            )),
            Some(what) if !self.named(host) => Err(format!(
                "{host} resolves to {addr}, {what}; refused (name it in the tool's allow_hosts to allow it)"
            )),
            _ => Ok(()),
        }
    }
}

fn normal(host: &str) -> String {
    host.trim().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Why an `allow_hosts` entry is not a host name, an address or `*.domain`; `None` when it is.
pub(crate) fn bad_host(entry: &str) -> Option<String> {
    let host = entry.strip_prefix("*.").unwrap_or(entry);
    let literal = entry.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok();
    let name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    (!literal && !name).then(|| {
        format!(
            "`{}` in allow_hosts is not a host name, an address or `*.domain` (no scheme, port or path)",
            entry.escape_debug()
        )
    })
}

/// `*.example.com` matches subdomains (not `example.com` itself); anything else matches exactly.
fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

/// What kind of internal address this is, or `None` for a public one.
pub(crate) fn internal(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4).map(|_| "an IPv4-mapped internal address");
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
                return internal_v4(v4).map(|_| "a NAT64 address of an internal IPv4 address");
            }
            // The deprecated IPv4-compatible form (::a.b.c.d).
            if seg[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                let v4 = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
                return internal_v4(v4).map(|_| "an IPv4-compatible internal address");
            }
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                return Some("a cloud metadata address");
            }
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Some("a private (unique local) address")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[0] == 0x2002 || seg[..2] == [0x2001, 0] || seg[..2] == [0x2001, 0xdb8] || seg[0] == 0x100 {
                Some("a tunnel, documentation or discard address")
            } else {
                None
            }
        }
    }
}

fn internal_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    if matches!(o, [169, 254, 169, 254] | [100, 100, 100, 200] | [192, 0, 0, 192]) {
        Some("a cloud metadata address")
    } else if v4.is_loopback() {
        Some("a loopback address")
    } else if v4.is_private() {
        Some("a private address")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 0 {
        Some("an unspecified (this-network) address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if o[..3] == [192, 0, 0] || o[..2] == [198, 18] || o[..2] == [198, 19] {
        Some("a protocol-assignment or benchmarking address")
    } else {
        None
    }
}

/// A name refused by the [`Resolver`] (it resolves to an internal address): the request fails for
/// good, not as a connection that might come back.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The client's resolver: resolves, then refuses the whole answer if any address is internal and
/// the host was not named in `allow_hosts` (one bad address is enough: the client might pick it).
pub(crate) struct Resolver {
    pub allow: Arc<Allow>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            for addr in &addrs {
                allow
                    .check(&host, addr.ip())
                    .map_err(|why| -> Box<dyn std::error::Error + Send + Sync> { Box::new(Refused(why)) })?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_named_and_public_ones_pass() {
        let kind = |s: &str| internal(s.parse().expect("ip"));
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "::",
            "100.64.0.1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(kind(ip).is_some(), "{ip} must be internal");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn allow_hosts_limits_hosts_and_naming_an_internal_host_allows_it() {
        let open = Allow::new(&[], false);
        assert!(open.host_allowed("example.com"));
        assert!(open.check("example.com", "127.0.0.1".parse().expect("ip")).is_err());
        let list = Allow::new(&["api.example.com".into(), "*.corp.example".into(), "127.0.0.1".into()], false);
        assert!(list.host_allowed("API.example.com."));
        assert!(!list.host_allowed("example.com"));
        assert!(list.host_allowed("a.corp.example"));
        assert!(!list.host_allowed("corp.example"));
        assert!(!list.host_allowed("evilcorp.example"));
        assert!(list.check("127.0.0.1", "127.0.0.1".parse().expect("ip")).is_ok());
        let why = list.check("a.corp.example", "10.0.0.7".parse().expect("ip")).expect_err("refused");
        assert!(why.contains("10.0.0.7, a private address"), "{why}");
        let strict = Allow::new(&["127.0.0.1".into()], true);
        assert!(strict.check("127.0.0.1", "127.0.0.1".parse().expect("ip")).is_err());
    }
}
