//! Privileged tests of the kernel datapath: the real programs in the real kernel, attached to a
//! child cgroup, driven in-process through the dataplane, with real sockets in network
//! namespaces. These are the tests the kernel matrix runs on every kernel
//! (`cargo xtask vm-test`); each builds its own [`Lab`](l7r_lab::lab::Lab) and tears it down on
//! every path.
//!
//! - [`steering`]: what is steered and what is not, the original destination, exclusions,
//!   fail-open, restarts, churn.
//! - [`readiness`]: the proxy's readiness lease, and the kernel voiding it when a steered
//!   connect fails (refused, or its SYN unanswered).
//! - [`side_effects`]: everything else on the node answers as without the programs (other
//!   sockets' getsockopt, iptables).
//! - [`upgrades`]: the pins' layout version (migrated, or refused), links of programs a version
//!   no longer has, and `detach` of everything.
//! - [`bookkeeping`]: the per-connection records under the harder cases (slow proxies,
//!   write-then-close clients, reconnects, fixed source ports, look-alike sockets).

mod bookkeeping;
mod readiness;
mod side_effects;
mod steering;
mod upgrades;
