//! The selected destinations a benchmark loads into each alternative: `N` distinct, random
//! but reproducible `(IPv4, TCP port)` pairs in the ClusterIP range `10.96.0.0/12`, which the
//! lab's own addresses (`10.77.0.0/16`) are not in, so the measured traffic never matches one.
//! Pure.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

/// First address of the range destinations are drawn from (Kubernetes' default ClusterIP
/// range).
const RANGE_START: u32 = u32::from_be_bytes([10, 96, 0, 0]);
/// Size of that range: a /12.
const RANGE_SIZE: u32 = 1 << 20;

/// SplitMix64: tiny, fast, and good enough to spread keys; seeded, so every run (and every
/// alternative within a run) gets the same destinations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// `n` distinct random destinations from `10.96.0.0/12`, ports `1..=65535`, none equal to an
/// address in `avoid`. The same `seed` gives the same list.
pub fn random_destinations(n: usize, seed: u64, avoid: &[SocketAddrV4]) -> Vec<SocketAddrV4> {
    let mut rng = Rng::new(seed);
    let mut seen: HashSet<SocketAddrV4> = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ip = Ipv4Addr::from(RANGE_START + rng.below(u64::from(RANGE_SIZE)) as u32);
        let port = 1 + rng.below(65_535) as u16;
        let dst = SocketAddrV4::new(ip, port);
        if !avoid.contains(&dst) && seen.insert(dst) {
            out.push(dst);
        }
    }
    out
}

/// The `i`-th address of a `/12` starting at `base` (wrapping inside it), skipping the
/// network's `.0` and `.255` host bytes for readability: the deterministic ClusterIPs and
/// endpoint addresses of the generated Services.
pub fn nth_address(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    // 254 usable host bytes per /24.
    let per24 = 254u32;
    let i = i as u32 % ((RANGE_SIZE / 256) * per24);
    let block = i / per24;
    let host = i % per24 + 1;
    Ipv4Addr::from(u32::from(base) + block * 256 + host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_in_range_and_reproducible() {
        let avoid = [SocketAddrV4::new(Ipv4Addr::new(10, 77, 2, 2), 8081)];
        let a = random_destinations(5_000, 7, &avoid);
        let b = random_destinations(5_000, 7, &avoid);
        assert_eq!(a, b, "same seed, same destinations");
        assert_eq!(a.len(), 5_000);
        let unique: HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), a.len());
        for d in &a {
            let ip = u32::from(*d.ip());
            assert!((RANGE_START..RANGE_START + RANGE_SIZE).contains(&ip), "{d}");
            assert_ne!(d.port(), 0);
            assert!(!avoid.contains(d));
        }
        assert_ne!(a, random_destinations(5_000, 8, &avoid));
        assert!(random_destinations(0, 1, &[]).is_empty());
    }

    #[test]
    fn nth_addresses_are_distinct_and_skip_network_bytes() {
        let base = Ipv4Addr::new(10, 96, 0, 0);
        assert_eq!(nth_address(base, 0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(nth_address(base, 253), Ipv4Addr::new(10, 96, 0, 254));
        assert_eq!(nth_address(base, 254), Ipv4Addr::new(10, 96, 1, 1));
        let all: HashSet<_> = (0..70_000).map(|i| nth_address(base, i)).collect();
        assert_eq!(all.len(), 70_000);
        assert!(all.iter().all(|a| {
            let last = a.octets()[3];
            last != 0 && last != 255
        }));
    }
}
