//! The client's address behind trusted proxies.
//!
//! Behind an Ingress or a load balancer every connection comes from the
//! proxy, so a per-IP limit on the TCP peer would count all clients as one.
//! Each proxy appends the address it received the request from to
//! `X-Forwarded-For`; read from the right, the first address that is not a
//! trusted proxy is the client. Entries left of it were written by the
//! client itself and are never believed, and nothing is read from the header
//! when the peer is not a trusted proxy.

use hyper::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The address to count a connection against: the TCP `peer`, or, when the
/// peer is in `trusted`, the nearest untrusted address in `X-Forwarded-For`.
/// An entry that is not an address ends the walk at the last proxy read.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|range| range.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for entry in entries.rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The trusted proxies of these tests: 10.0.0.0/8.
    fn private_range() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    fn with_forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let trusted = private_range();
        let headers = with_forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_address(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), &headers, &[]),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), &headers, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_nearest_untrusted_address_wins_over_what_the_client_wrote() {
        let trusted = private_range();
        // The client claimed 1.2.3.4; the edge proxy saw 203.0.113.9; an
        // inner proxy (10.1.1.1) forwarded to Herald.
        let headers = with_forwarded(&["1.2.3.4, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            client_address(ip("10.0.0.5"), &headers, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_or_a_missing_header_stops_at_the_last_proxy() {
        let trusted = private_range();
        let peer = ip("10.0.0.5");
        assert_eq!(client_address(peer, &HeaderMap::new(), &trusted), peer);
        let headers = with_forwarded(&["203.0.113.9, unknown, 10.2.2.2"]);
        assert_eq!(client_address(peer, &headers, &trusted), ip("10.2.2.2"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let trusted = private_range();
        let headers = with_forwarded(&["::ffff:203.0.113.9"]);
        let peer = ip("::ffff:10.0.0.5");
        assert_eq!(client_address(peer, &headers, &trusted), ip("203.0.113.9"));
    }
}
