//! Who may POST updates: an optional allow-list of source networks.
//!
//! Off by default. When `COURIER_INGRESS_ALLOWED_NETWORKS` is set, a webhook request whose
//! source address is outside every listed network is answered 403 before its body is read (and
//! before the secret check). The source is the TCP peer; behind a reverse proxy, list the proxy
//! in `COURIER_INGRESS_TRUSTED_PROXIES` and the source becomes the right-most address in
//! `X-Forwarded-For` that is not a trusted proxy (the left part of that header is written by the
//! client and proves nothing).
//!
//! The name `telegram` stands for the networks Telegram documents webhook delivery from
//! ([`TELEGRAM_NETWORKS`]). Health endpoints are not filtered: probes come from the cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use courier_common::config::ConfigError;
use ipnet::IpNet;

/// The networks Telegram sends webhooks from, as its documentation lists them
/// (<https://core.telegram.org/bots/webhooks>, "the IP ranges").
pub const TELEGRAM_NETWORKS: [&str; 2] = ["149.154.160.0/20", "91.108.4.0/22"];

/// The header a reverse proxy appends the address it received the request from to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// Source-address settings (environment variables or the matching flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// Source networks allowed to POST updates, comma separated: CIDRs (`10.0.0.0/8`), single
    /// addresses, or `telegram` for Telegram's documented webhook networks (149.154.160.0/20,
    /// 91.108.4.0/22). Others get 403 before the body is read. Empty: any source.
    #[arg(long = "allowed-networks", env = "COURIER_INGRESS_ALLOWED_NETWORKS")]
    pub allowed_networks: Option<String>,
    /// Reverse proxies (CIDRs or addresses, comma separated) whose `X-Forwarded-For` is
    /// believed: from them, the source is the right-most forwarded address that is not itself a
    /// trusted proxy. Empty: the source is always the TCP peer.
    #[arg(long = "trusted-proxies", env = "COURIER_INGRESS_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
}

impl AccessArgs {
    /// Parses both lists; a bad entry is refused with the variable's name.
    pub fn policy(&self) -> Result<Option<Policy>, ConfigError> {
        let allowed = Networks::parse_var(
            "COURIER_INGRESS_ALLOWED_NETWORKS",
            self.allowed_networks.as_deref(),
        )?;
        let trusted = Networks::parse_var(
            "COURIER_INGRESS_TRUSTED_PROXIES",
            self.trusted_proxies.as_deref(),
        )?;
        Ok((!allowed.is_empty()).then_some(Policy { allowed, trusted }))
    }
}

/// A set of IP networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    /// Parses a comma-separated list of CIDRs, bare addresses and the name `telegram`.
    /// Empty entries are ignored; a CIDR with host bits set is refused (it is usually a typo).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.eq_ignore_ascii_case("telegram") {
                nets.extend(
                    TELEGRAM_NETWORKS
                        .iter()
                        .map(|n| n.parse::<IpNet>().expect("valid")),
                );
                continue;
            }
            if let Ok(addr) = entry.parse::<IpAddr>() {
                nets.push(IpNet::from(addr.to_canonical()));
                continue;
            }
            let net: IpNet = entry.parse().map_err(|_| {
                format!("`{entry}` is not a network (CIDR such as 10.0.0.0/8), an address, or `telegram`")
            })?;
            if net.trunc() != net {
                return Err(format!(
                    "`{entry}` has host bits set; did you mean {}?",
                    net.trunc()
                ));
            }
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn parse_var(var: &'static str, raw: Option<&str>) -> Result<Self, ConfigError> {
        Self::parse(raw.unwrap_or("")).map_err(|reason| ConfigError { var, reason })
    }

    /// Whether no network is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `addr` (IPv4-mapped IPv6 counts as IPv4) is in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|n| n.contains(&addr))
    }
}

/// The allow-list in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Sources allowed to POST updates (never empty).
    pub allowed: Networks,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted: Networks,
}

impl Policy {
    /// The request's source: the peer, or behind trusted proxies the right-most forwarded
    /// address that is not a trusted proxy. `None` when a forwarded address cannot be read
    /// (then the source is unknown, and unknown is not allowed).
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let mut source = peer.to_canonical();
        if !self.trusted.contains(source) {
            return Some(source);
        }
        let mut hops = Vec::new();
        for value in headers.get_all(FORWARDED_FOR) {
            hops.extend(value.to_str().ok()?.split(',').map(str::trim));
        }
        for hop in hops.into_iter().rev() {
            source = hop.parse::<IpAddr>().ok()?.to_canonical();
            if !self.trusted.contains(source) {
                return Some(source);
            }
        }
        // Every hop is a trusted proxy: the left-most one is the source.
        Some(source)
    }

    /// Whether a request from `peer` with these headers may go on.
    pub fn allows(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        self.source(peer, headers)
            .is_some_and(|s| self.allowed.contains(s))
    }
}

/// Middleware: 403 for a source outside the allow-list. Runs before the secret check and before
/// the body is read. The peer address comes from [`ConnectInfo`], which [`crate::serve`] sets
/// on every request; a request without it is refused.
pub(crate) async fn check_source(
    State(policy): State<Arc<Policy>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if peer.is_some_and(|peer| policy.allows(peer, req.headers())) {
        return next.run(req).await;
    }
    tracing::debug!(
        ?peer,
        "source not in COURIER_INGRESS_ALLOWED_NETWORKS; answering 403"
    );
    (StatusCode::FORBIDDEN, "source address not allowed\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(allowed: &str, trusted: &str) -> Policy {
        AccessArgs {
            allowed_networks: Some(allowed.into()),
            trusted_proxies: Some(trusted.into()),
        }
        .policy()
        .unwrap()
        .unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn off_unless_networks_are_listed() {
        assert_eq!(AccessArgs::default().policy().unwrap(), None);
        let blank = AccessArgs {
            allowed_networks: Some(" , ".into()),
            trusted_proxies: Some("10.0.0.1".into()),
        };
        assert_eq!(blank.policy().unwrap(), None);
    }

    #[test]
    fn telegram_names_its_documented_networks() {
        let p = policy("telegram", "");
        for inside in [
            "149.154.160.1",
            "149.154.175.254",
            "91.108.4.1",
            "91.108.7.255",
        ] {
            assert!(p.allows(ip(inside), &HeaderMap::new()), "{inside}");
        }
        for outside in [
            "149.154.176.0",
            "149.154.159.255",
            "91.108.8.0",
            "127.0.0.1",
            "::1",
        ] {
            assert!(!p.allows(ip(outside), &HeaderMap::new()), "{outside}");
        }
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address.
        assert!(p.allows(ip("::ffff:149.154.160.9"), &HeaderMap::new()));
    }

    #[test]
    fn lists_mix_names_cidrs_and_addresses() {
        let p = policy("telegram, 10.1.0.0/16,192.0.2.7, 2001:db8::/32", "");
        assert!(p.allows(ip("10.1.2.3"), &HeaderMap::new()));
        assert!(p.allows(ip("192.0.2.7"), &HeaderMap::new()));
        assert!(!p.allows(ip("192.0.2.8"), &HeaderMap::new()));
        assert!(p.allows(ip("2001:db8::1"), &HeaderMap::new()));
        assert!(p.allows(ip("91.108.4.9"), &HeaderMap::new()));
    }

    #[test]
    fn bad_entries_name_the_variable() {
        for (allowed, trusted, var) in [
            ("10.0.0.0/33", "", "COURIER_INGRESS_ALLOWED_NETWORKS"),
            ("telegrm", "", "COURIER_INGRESS_ALLOWED_NETWORKS"),
            ("10.0.0.1/8", "", "COURIER_INGRESS_ALLOWED_NETWORKS"),
            ("telegram", "proxy.local", "COURIER_INGRESS_TRUSTED_PROXIES"),
        ] {
            let err = AccessArgs {
                allowed_networks: Some(allowed.into()),
                trusted_proxies: Some(trusted.into()),
            }
            .policy()
            .unwrap_err();
            assert_eq!(err.var, var, "{allowed} / {trusted}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let p = policy("telegram", "10.0.0.0/8");
        let tg = "149.154.160.5";
        // Not from a proxy: the header is the client's own claim and is ignored.
        assert!(!p.allows(ip("203.0.113.9"), &xff(&[tg])));
        // From a proxy: the right-most untrusted hop is the source.
        assert!(p.allows(ip("10.0.0.2"), &xff(&[tg])));
        assert!(p.allows(ip("10.0.0.2"), &xff(&[&format!("{tg}, 10.0.0.3")])));
        assert!(p.allows(ip("10.0.0.2"), &xff(&["203.0.113.9", tg])));
        // A client that puts Telegram's address first cannot hide behind it.
        assert!(!p.allows(ip("10.0.0.2"), &xff(&[&format!("{tg}, 203.0.113.9")])));
        assert!(!p.allows(ip("10.0.0.2"), &xff(&[tg, "203.0.113.9"])));
        // Nothing forwarded, unreadable hops: the source is the proxy itself, or unknown.
        assert!(!p.allows(ip("10.0.0.2"), &HeaderMap::new()));
        assert!(!p.allows(ip("10.0.0.2"), &xff(&["not-an-ip"])));
        assert!(!p.allows(ip("10.0.0.2"), &xff(&[&format!("garbage, {tg}, x")])));
        assert_eq!(
            p.source(ip("10.0.0.2"), &xff(&["10.0.0.9"])),
            Some(ip("10.0.0.9"))
        );
    }
}
