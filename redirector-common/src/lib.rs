//! Map keys, values and constants shared by the kernel programs (`redirector-ebpf`) and user
//! space (`redirector`).
//!
//! Every type is `#[repr(C)]` with explicit padding fields and a `const` size assert, because the
//! kernel and user space must agree on the layout byte for byte. Addresses are byte arrays (IPv4
//! stored IPv4-mapped in 16 bytes) and ports are in host byte order, so that
//! `bpftool map dump pinned ...` prints values a person can read.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
mod user;

/// Names of the maps, as they appear in the object file and under the pin directory.
pub mod map_names {
    /// Selected destinations: [`ServiceKey`](crate::ServiceKey) → [`ServiceValue`](crate::ServiceValue).
    pub const SERVICES: &str = "services";
    /// One entry (index 0): the [`Config`](crate::Config).
    pub const CONFIG: &str = "config";
    /// Redirected connections as the proxy sees them: client [`Endpoint`](crate::Endpoint) →
    /// original destination [`Endpoint`](crate::Endpoint).
    pub const ORIG_DST: &str = "orig_dst";
    /// Per-socket storage on a redirected client socket: its original destination.
    pub const SOCK_ORIG_DST: &str = "sock_orig_dst";
    /// Per-CPU [`Counters`](crate::Counters) at index 0.
    pub const COUNTERS: &str = "counters";
    /// Service id → [`ServiceName`](crate::ServiceName), so `redirector status` can name
    /// Services from the pins alone. Only user space reads it.
    pub const SERVICE_NAMES: &str = "service_names";
    /// Index [`PROXY4`](crate::PROXY4) / [`PROXY6`](crate::PROXY6): the
    /// [`ProxyLease`](crate::ProxyLease) the daemon grants each proxy. Only user space writes it.
    pub const PROXY_LEASE: &str = "proxy_lease";
    /// Index [`PROXY4`](crate::PROXY4) / [`PROXY6`](crate::PROXY6): when (`bpf_ktime_get_ns`)
    /// a steered connect to that proxy last failed. Only the kernel writes it.
    pub const PROXY_FAILED: &str = "proxy_failed";

    /// One entry: the [`LAYOUT_VERSION`](crate::LAYOUT_VERSION) of the pins in this directory.
    /// Only user space reads and writes it.
    pub const LAYOUT: &str = "layout";

    /// Every map the daemon pins, in a stable order.
    pub const ALL: [&str; 9] = [
        SERVICES,
        CONFIG,
        ORIG_DST,
        SOCK_ORIG_DST,
        COUNTERS,
        SERVICE_NAMES,
        PROXY_LEASE,
        PROXY_FAILED,
        LAYOUT,
    ];
}

/// The version of the pinned state's layout: which maps exist and what their keys and values
/// are. Raised with every change a running dataplane could not simply adopt; the daemon
/// migrates pins of each older version it knows (`redirector/src/dataplane/pins.rs`) and refuses
/// newer ones.
///
/// - 1: the pins before the version stamp (`config` with a ready flag per family).
/// - 2: readiness as a lease: `proxy_lease` and `proxy_failed`; `config`'s ready flags reserved.
pub const LAYOUT_VERSION: u32 = 2;

/// Names of the kernel programs (the Rust function names in `redirector-ebpf`).
pub mod program_names {
    /// `cgroup/connect4`: steers IPv4 TCP connects.
    pub const CONNECT4: &str = "connect4";
    /// `cgroup/connect6`: steers IPv6 and IPv4-mapped TCP connects.
    pub const CONNECT6: &str = "connect6";
    /// `sockops`: publishes a redirected connection's tuple and removes it at close. (Not
    /// named `sockops`: a symbol may not share its section's name.)
    pub const SOCKOPS: &str = "track_connection";
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
    pub const GETSOCKOPT: &str = "getsockopt";
    /// `cgroup/getpeername4`: a redirected client sees the Service as its peer.
    pub const GETPEERNAME4: &str = "getpeername4";
    /// `cgroup/getpeername6`: the same for IPv6 sockets.
    pub const GETPEERNAME6: &str = "getpeername6";

    /// Every program, in the order the daemon attaches them.
    pub const ALL: [&str; 6] = [
        CONNECT4,
        CONNECT6,
        SOCKOPS,
        GETSOCKOPT,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}

/// `IPPROTO_TCP`, the only protocol the redirector steers.
pub const IPPROTO_TCP: u8 = 6;
/// `SOL_IP`.
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
pub const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (netfilter's `linux/netfilter_ipv4.h`).
pub const SO_ORIGINAL_DST: i32 = 80;
/// `IP6T_SO_ORIGINAL_DST` (netfilter's `linux/netfilter_ipv6/ip6_tables.h`).
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Default capacity of the `services` map (`--services-capacity` changes it).
pub const DEFAULT_SERVICES_CAPACITY: u32 = 65_536;
/// Capacity of `orig_dst`. It is an LRU: entries are removed at close, the LRU is a backstop.
pub const ORIG_DST_CAPACITY: u32 = 65_536;
/// How many UIDs `--exclude-uid` may name.
pub const MAX_EXCLUDED_UIDS: usize = 8;
/// How many cgroups `--exclude-cgroup` may name.
pub const MAX_EXCLUDED_CGROUPS: usize = 8;

/// An IP address and port. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// IPv6 address, or IPv4-mapped IPv4 address, in network order.
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// Explicit padding; always zero so keys compare byte for byte.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

impl Endpoint {
    /// An endpoint from a 16-byte address and a host-order port.
    #[inline(always)]
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            _pad: [0; 2],
        }
    }

    /// Whether the address is IPv4-mapped.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        is_v4_mapped(&self.addr)
    }

    /// The IPv4 address, if the address is IPv4-mapped.
    #[inline(always)]
    pub const fn v4(&self) -> Option<[u8; 4]> {
        if self.is_v4() {
            Some([self.addr[12], self.addr[13], self.addr[14], self.addr[15]])
        } else {
            None
        }
    }
}

/// `::ffff:a.b.c.d` for `a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether `addr` is an IPv4-mapped IPv6 address.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    // Compared as two words: fewer instructions for the verifier than a byte loop.
    let hi = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let mid = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
    hi == 0 && mid == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Whether two 16-byte addresses are equal, compared as four words (fewer instructions for the
/// verifier than a byte loop).
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
            != u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
        {
            return false;
        }
        i += 4;
    }
    true
}

/// The proxy port a connection to `dst` is steered to: `first + hash(dst) % count`. The kernel
/// programs and user space (status, tests) compute it with this one function.
#[inline(always)]
pub fn proxy_port_for(dst: &Endpoint, first: u16, count: u16) -> u16 {
    if count <= 1 {
        return first;
    }
    // FNV-1a over the address words and the port, then murmur3's finaliser: multiplication
    // only carries upwards, and the modulo below reads the low bits.
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < 16 {
        let word = u32::from_ne_bytes([
            dst.addr[i],
            dst.addr[i + 1],
            dst.addr[i + 2],
            dst.addr[i + 3],
        ]);
        h = (h ^ word).wrapping_mul(0x0100_0193);
        i += 4;
    }
    h = (h ^ u32::from(dst.port)).wrapping_mul(0x0100_0193);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    first.wrapping_add((h % u32::from(count)) as u16)
}

/// Key of the `services` map: one selected destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Destination address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// IP protocol; only [`IPPROTO_TCP`] is ever inserted.
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

impl ServiceKey {
    /// The key for a TCP destination.
    #[inline(always)]
    pub const fn tcp(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            proto: IPPROTO_TCP,
            _pad: 0,
        }
    }
}

/// Value of the `services` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Which Service this destination belongs to (the daemon's numbering).
    pub service_id: u32,
    /// Reserved for per-destination options; zero today.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

/// Longest namespace or name a Kubernetes object can have (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;

/// Value of `service_names`: a Service's namespace and name, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// The namespace, NUL-padded.
    pub namespace: [u8; MAX_NAME_LEN + 1],
    /// The name, NUL-padded.
    pub name: [u8; MAX_NAME_LEN + 1],
}
const _: () = assert!(core::mem::size_of::<ServiceName>() == 128);

/// A cgroup v2 directory whose processes (and their descendants' processes) are never steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupRef {
    /// The cgroup's id (the inode number of its directory).
    pub id: u64,
    /// Its depth below the cgroup2 root (the root is level 0).
    pub level: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupRef>() == 16);

/// Index of the IPv4 proxy in `proxy_lease` and `proxy_failed`.
pub const PROXY4: u32 = 0;
/// Index of the IPv6 proxy in `proxy_lease` and `proxy_failed`.
pub const PROXY6: u32 = 1;

/// A proxy's readiness as a lease: the programs steer to it only while
/// `now < ready_until_ns` and no steered connect to it has failed since `checked_at_ns`
/// (`proxy_failed`). Times are `CLOCK_MONOTONIC` nanoseconds, the clock of `bpf_ktime_get_ns`.
///
/// A lease, not a flag, so that nothing has to be written for traffic to fail open: when the
/// daemon is gone (crashed, uninstalled, stuck) the lease runs out and new connections go
/// direct. And a failure seen by the kernel voids it at once, without waiting for the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProxyLease {
    /// Steer until this instant; 0: not ready.
    pub ready_until_ns: u64,
    /// When the proxy check that granted the lease started. A failure recorded after it (in
    /// `proxy_failed`) voids the lease; one recorded before it was already known to the check.
    pub checked_at_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ProxyLease>() == 16);

impl ProxyLease {
    /// A lease that steers nothing.
    pub const NOT_READY: Self = Self {
        ready_until_ns: 0,
        checked_at_ns: 0,
    };

    /// Whether the programs steer to the proxy at `now`, given when a steered connect to it
    /// last failed (`failed_at_ns`, 0 for never). The kernel and user space (status, metrics)
    /// decide with this one function.
    #[inline(always)]
    pub const fn steers(&self, now_ns: u64, failed_at_ns: u64) -> bool {
        now_ns < self.ready_until_ns && failed_at_ns <= self.checked_at_ns
    }
}

/// The single entry of the `config` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// The node proxy's IPv4 address.
    pub proxy4_addr: [u8; 4],
    /// The node proxy's IPv4 port (host order); 0 means no IPv4 proxy.
    pub proxy4_port: u16,
    /// Always zero. (Versions before the readiness lease kept a ready flag per family here;
    /// readiness is now the `proxy_lease` map, which expires on its own.)
    pub _reserved: [u8; 2],
    /// The node proxy's IPv6 address.
    pub proxy6_addr: [u8; 16],
    /// The node proxy's IPv6 port (host order); 0 means no IPv6 proxy.
    pub proxy6_port: u16,
    /// How many consecutive ports, from `proxy4_port` and `proxy6_port`, the proxy listens
    /// on (0 counts as 1). Each selected destination is steered to one of them, chosen by a
    /// hash of the destination ([`proxy_port_for`]), so steered connections to different
    /// destinations do not share one 4-tuple space.
    pub proxy_ports: u16,
    /// Sockets whose `SO_MARK & exclude_mark_mask == exclude_mark` are never steered
    /// (ignored while the mask is 0).
    pub exclude_mark: u32,
    /// See `exclude_mark`.
    pub exclude_mark_mask: u32,
    /// How many entries of `exclude_uids` are in use.
    pub exclude_uid_count: u32,
    /// Processes running as these UIDs are never steered.
    pub exclude_uids: [u32; MAX_EXCLUDED_UIDS],
    /// How many entries of `exclude_cgroups` are in use.
    pub exclude_cgroup_count: u32,
    /// Tasks whose cgroup is less deep than this are never steered: set to one below the
    /// cgroup the programs are attached to, it keeps out the tasks of that cgroup itself, which
    /// on a node (attached to the root) are the kernel's threads (NFS, CIFS, ceph clients
    /// connect from there) and nothing else of a Kubernetes node. 0 turns the check off.
    pub steer_min_level: u32,
    /// Processes in these cgroups (or below them) are never steered.
    pub exclude_cgroups: [CgroupRef; MAX_EXCLUDED_CGROUPS],
}
const _: () = assert!(core::mem::size_of::<Config>() == 208);

impl Config {
    /// How many proxy ports there are (at least 1).
    #[inline(always)]
    pub const fn proxy_port_count(&self) -> u16 {
        if self.proxy_ports == 0 {
            1
        } else {
            self.proxy_ports
        }
    }

    /// Whether `local` (an accepted socket's own address) is one the proxy listens on.
    #[inline(always)]
    pub fn is_proxy_endpoint(&self, local: &Endpoint) -> bool {
        let (addr, first) = match local.v4() {
            Some(_) => (v4_mapped(self.proxy4_addr), self.proxy4_port),
            None => (self.proxy6_addr, self.proxy6_port),
        };
        let count = self.proxy_port_count();
        first != 0
            && local.port >= first
            && local.port - first < count
            && same_addr(&local.addr, &addr)
    }

    /// Whether a socket carrying `mark` is excluded by the mark rule.
    #[inline(always)]
    pub const fn mark_excluded(&self, mark: u32) -> bool {
        self.exclude_mark_mask != 0 && mark & self.exclude_mark_mask == self.exclude_mark
    }

    /// Whether `uid` is one of the excluded UIDs.
    #[inline(always)]
    pub fn uid_excluded(&self, uid: u32) -> bool {
        let mut i = 0;
        while i < MAX_EXCLUDED_UIDS {
            if i as u32 >= self.exclude_uid_count {
                return false;
            }
            if self.exclude_uids[i] == uid {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// What user space knows about one kernel counter: its field, what it counts, and the
/// Prometheus sample it is published as. [`Counters::FIELDS`] lists every field, in order, so
/// `redirector status`, its JSON and `/metrics` all iterate over the same table.
#[derive(Clone, Copy, Debug)]
pub struct CounterInfo {
    /// The field's name: also its key in `redirector status --json`.
    pub name: &'static str,
    /// What it counts (the field's doc comment).
    pub help: &'static str,
    /// The Prometheus metric family it belongs to.
    pub metric: &'static str,
    /// The label that tells it apart within its family, when the family has several members.
    pub label: Option<(&'static str, &'static str)>,
    /// Reads the field.
    pub get: fn(&Counters) -> u64,
    /// The field, to add to it.
    pub get_mut: fn(&mut Counters) -> &mut u64,
}

/// Declares [`Counters`] and its table [`Counters::FIELDS`] from one list, so a counter is
/// added in one place (plus the kernel's `bump!` that increments it).
macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident => $metric:literal $({ $key:literal = $value:literal })?;
    )+) => {
        /// Per-CPU counters (index 0 of `counters`); user space sums the CPUs.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct Counters {
            $( $(#[doc = $doc])+ pub $field: u64, )+
        }

        impl Counters {
            /// Every field, in declaration order.
            pub const FIELDS: &'static [CounterInfo] = &[
                $( CounterInfo {
                    name: stringify!($field),
                    help: concat!($($doc),+),
                    metric: $metric,
                    label: counters!(@label $($key, $value)?),
                    get: |c| c.$field,
                    get_mut: |c| &mut c.$field,
                }, )+
            ];
        }
    };
    (@label) => { None };
    (@label $key:literal, $value:literal) => { Some(($key, $value)) };
}

counters! {
    /// TCP connects seen by connect4/connect6.
    seen => "l7r_connections_seen_total";
    /// Connects rewritten to the proxy.
    redirected => "l7r_connections_redirected_total";
    /// Selected destination, but the socket is excluded (cgroup, UID or mark).
    skipped_excluded => "l7r_connections_skipped_total" { "reason" = "excluded" };
    /// Selected destination, but the task is in the attach point's own cgroup (kernel threads).
    skipped_root_cgroup => "l7r_connections_skipped_total" { "reason" = "root_cgroup" };
    /// Selected destination, but no proxy of its family is configured (IPv6 without --proxy6).
    skipped_no_proxy => "l7r_connections_skipped_total" { "reason" = "no_proxy" };
    /// Selected destination, but the proxy is not ready (fail-open): its lease ran out or was
    /// revoked, or a steered connect to it failed since the last good check.
    skipped_proxy_not_ready => "l7r_connections_skipped_total" { "reason" = "proxy_not_ready" };
    /// Selected destination, but the original destination could not be recorded (no memory).
    skipped_record_failed => "l7r_connections_skipped_total" { "reason" = "record_failed" };
    /// A steered connection that could not be published in `orig_dst` (no memory): the proxy will
    /// find no original destination for it.
    publish_failed => "l7r_original_dst_publish_failures_total";
    /// A steered connect that failed at the proxy (refused, or its SYN timed out): each one voids
    /// the proxy's lease until the daemon's next good check, so the connects after it go direct.
    proxy_connect_failed => "l7r_proxy_connect_failures_total";
    /// `SO_ORIGINAL_DST` asked by the proxy and answered from `orig_dst`.
    orig_dst_found => "l7r_original_dst_lookups_total" { "result" = "found" };
    /// `SO_ORIGINAL_DST` asked on a proxy socket for a connection that was not steered (it was made
    /// to the proxy directly): answered with the proxy's own address.
    orig_dst_not_found => "l7r_original_dst_lookups_total" { "result" = "not_found" };
}
// Every field is a u64 listed in the table: a field left out of it would break this.
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * Counters::FIELDS.len());

impl Counters {
    /// Connections the programs could not record because the kernel could not allocate memory:
    /// socket storage (`skipped_record_failed`: the connection went direct, unlogged) and
    /// `orig_dst` entries (`publish_failed`: the proxy cannot find the destination). On Linux
    /// 5.11+ both are charged to the memory cgroup of the daemon that created the maps.
    pub const fn allocation_failures(&self) -> u64 {
        self.skipped_record_failed + self.publish_failed
    }
}

/// Field-wise sum, for adding up the per-CPU copies.
impl core::ops::AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, other: &Counters) {
        for field in Counters::FIELDS {
            *(field.get_mut)(self) += (field.get)(other);
        }
    }
}
