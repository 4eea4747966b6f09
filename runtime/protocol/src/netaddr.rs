//! "Private" addresses, as Python's `ipaddress` module classifies them (the
//! original allowed private, loopback, link-local, multicast, reserved and
//! unspecified addresses). Used for the miner API's `/registry/auth` callers and
//! for where GraVal's bootstrap server may fetch an unsigned `token_url`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_internal(v4),
            None => v6_internal(v6),
        },
    }
}

fn v4_internal(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || o[0] == 0 // 0.0.0.0/8
        || o[0] >= 240 // 240.0.0.0/4 reserved, and broadcast
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || ip.is_documentation() // Python counts the TEST-NETs as private too
}

fn v6_internal(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_python_ipaddress() {
        for ok in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.5",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ok.parse().unwrap()), "{ok}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.64.0.1", "2001:4860::8888", "::ffff:8.8.8.8"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
