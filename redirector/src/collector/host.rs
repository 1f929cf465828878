//! What the collector learns about the node it runs on: its name (the records' `host`) and its
//! own addresses (sources that are the host itself). The collector runs with the node's
//! network (`hostNetwork` in the DaemonSet), so its interfaces are the node's.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The node's name: `$NODE_NAME` (the DaemonSet sets it from `spec.nodeName`), else the host
/// name, else `-`.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "-".to_string())
}

/// Every address on this network namespace's interfaces (IPv4 and IPv6, loopback included).
pub fn own_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) stores a list it allocated in `head`; it is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        let addr = entry.ifa_addr;
        if !addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its real
            // type; each cast below matches the family checked.
            match i32::from(unsafe { (*addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*addr.cast::<libc::sockaddr_in>() };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; nothing points into it any more.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_one_of_our_addresses() {
        let addrs = own_addresses().unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn a_node_name_is_always_there() {
        assert!(!node_name().is_empty());
    }
}
