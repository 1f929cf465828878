//! The maps, as BTF maps so `bpftool map dump` prints them field by field. User space pins them
//! under the pin directory (aya-ebpf 0.2 BTF maps carry no pinning attribute).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use redirector_common::{
    Config, Counters, DEFAULT_SERVICES_CAPACITY, Endpoint, ORIG_DST_CAPACITY, ProxyLease,
    ServiceKey, ServiceName, ServiceValue,
};

/// Selected destinations. User space may resize it before load (`--services-capacity`).
#[btf_map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { DEFAULT_SERVICES_CAPACITY as usize }> =
    HashMap::new();

/// Index 0: proxy addresses, readiness and exclusions.
#[btf_map(name = "config")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Per proxy (`PROXY4`, `PROXY6`): the readiness lease the daemon grants. Written only by user
/// space, so the kernel's own verdict (`PROXY_FAILED`) can never be lost to a racing write.
#[btf_map(name = "proxy_lease")]
pub static PROXY_LEASE: Array<ProxyLease, 2> = Array::new();

/// Per proxy: when a steered connect to it last failed (`bpf_ktime_get_ns`). Written only by
/// the kernel; it voids any lease granted by a check that started before it.
#[btf_map(name = "proxy_failed")]
pub static PROXY_FAILED: Array<u64, 2> = Array::new();

/// Redirected connections keyed by the client's address and port, which is how the proxy sees
/// them: the client's original destination. Removed at close by `sockops`; LRU as a backstop.
#[btf_map(name = "orig_dst")]
pub static ORIG_DST: LruHashMap<Endpoint, Endpoint, { ORIG_DST_CAPACITY as usize }> =
    LruHashMap::new();

/// The original destination stored on the redirected client socket itself. The kernel frees it
/// with the socket, so it can never go stale.
#[btf_map(name = "sock_orig_dst")]
pub static SOCK_ORIG_DST: SkStorage<Endpoint> = SkStorage::new();

/// Per-CPU counters at index 0.
#[btf_map(name = "counters")]
pub static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// Service id → namespace/name, for `redirector status`. No program reads it; it lives here so
/// the loader creates and pins it with BTF like the others.
#[btf_map(name = "service_names")]
pub static SERVICE_NAMES: HashMap<u32, ServiceName, { DEFAULT_SERVICES_CAPACITY as usize }> =
    HashMap::new();

/// Index 0: the layout version of the pins (`LAYOUT_VERSION`), written by user space when it
/// loads. No program reads it; it is here so the loader creates and pins it like the others.
#[btf_map(name = "layout")]
pub static LAYOUT: Array<u32, 1> = Array::new();
