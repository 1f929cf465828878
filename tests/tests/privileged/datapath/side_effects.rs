//! Nothing else on the node changes: sockets the redirector has no business with get exactly
//! the kernel's answers with the programs attached, on every kernel of the matrix.
//!
//! Each check makes the same call twice in the client's network namespace: from a socket of
//! the client cgroup (under the programs) and from a socket of this test's own cgroup (outside
//! the lab's tree, so no program runs). The two answers must be equal.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use l7r_lab::{
    cgroups::in_cgroup,
    lab::{BACKEND4, CLIENT4, Lab, NODE4_UPSTREAM, SERVICE_PORT, sa},
    process::spawn_in,
    proxy::Upstream,
    sys::run_with_input,
};
use socket2::{Domain, Socket, Type};

/// A buffer well over a page: the program sees only the first page of it.
const BIG: usize = 64 * 1024;

/// What a getsockopt call answered: its return value and errno, the length the kernel wrote
/// back, and the bytes it wrote.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    rc: i32,
    errno: i32,
    optlen: u32,
    bytes: Vec<u8>,
}

fn getsockopt(fd: &OwnedFd, level: i32, name: i32) -> Answer {
    let mut buf = vec![0u8; BIG];
    let mut len = BIG as libc::socklen_t;
    // SAFETY: the buffer is `len` bytes long and outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let errno = if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    let written = if rc == 0 { (len as usize).min(BIG) } else { 0 };
    Answer {
        rc,
        errno,
        optlen: len,
        bytes: buf[..written].to_vec(),
    }
}

/// The calls compared: some the kernel answers with data, some with an error, one of them the
/// option the redirector answers itself on proxy sockets (`SO_ORIGINAL_DST`).
fn calls() -> Result<Vec<(&'static str, Answer)>> {
    let tcp: OwnedFd = Socket::new(Domain::IPV4, Type::STREAM, None)?.into();
    let tcp6: OwnedFd = Socket::new(Domain::IPV6, Type::STREAM, None)?.into();
    let (unix_a, _unix_b) = std::os::unix::net::UnixStream::pair()?;
    let unix: OwnedFd = unix_a.into();
    Ok(vec![
        (
            "SO_TYPE on TCP",
            getsockopt(&tcp, libc::SOL_SOCKET, libc::SO_TYPE),
        ),
        (
            "SO_ORIGINAL_DST on an unconnected TCP socket",
            getsockopt(&tcp, libc::SOL_IP, 80),
        ),
        (
            "IP6T_SO_ORIGINAL_DST on an unconnected TCP socket",
            getsockopt(&tcp6, libc::SOL_IPV6, 80),
        ),
        (
            "IP_PKTOPTIONS on TCP",
            getsockopt(&tcp, libc::SOL_IP, libc::IP_PKTOPTIONS),
        ),
        (
            "SO_PEERSEC on a unix socket",
            getsockopt(&unix, libc::SOL_SOCKET, libc::SO_PEERSEC),
        ),
        ("an unknown option", getsockopt(&tcp, libc::SOL_TCP, 4242)),
    ])
}

#[test]
fn large_getsockopt_calls_answer_as_without_the_programs() -> Result<()> {
    let lab = Lab::new()?;
    let hooked = in_cgroup(&lab.client_cgroup, || lab.client_ns.run(calls))???;
    let plain = lab.client_ns.run(calls)??;
    for ((what, under), (_, without)) in hooked.iter().zip(&plain) {
        assert_eq!(
            under, without,
            "{what} with a {BIG}-byte buffer: under the programs (left) and without (right)"
        );
    }
    Ok(())
}

/// `iptables-save` asks for the whole table with one getsockopt as large as the table: the call
/// that broke on kernels without the 2023 fix, and kube-proxy's iptables mode with it.
#[test]
fn iptables_save_of_a_big_table_works_under_the_programs() -> Result<()> {
    const RULES: usize = 5000;
    let lab = Lab::new()?;
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..RULES {
        rules.push_str(&format!(
            "-A INPUT -s 10.{}.{}.0/24 -p tcp --dport {} -j ACCEPT\n",
            i / 256,
            i % 256,
            1000 + i % 50000
        ));
    }
    rules.push_str("COMMIT\n");
    run_with_input(
        "ip",
        &[
            "netns",
            "exec",
            lab.client_ns.name(),
            "iptables-legacy-restore",
        ],
        &rules,
    )
    .context("iptables-legacy (Debian's iptables package) loads the table")?;

    let save = |cgroup: Option<&std::path::Path>| -> Result<String> {
        let mut cmd = Command::new("iptables-legacy-save");
        cmd.args(["-t", "filter"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = spawn_in(cmd, &lab.client_ns, cgroup)?.wait_with_output()?;
        ensure!(
            out.status.success(),
            "iptables-legacy-save {} the programs failed ({}): {}",
            if cgroup.is_some() { "under" } else { "without" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Comment lines carry the time of the dump.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let without = save(None)?;
    let under = save(Some(&lab.client_cgroup))?;
    assert!(
        without
            .lines()
            .filter(|l| l.starts_with("-A INPUT"))
            .count()
            == RULES,
        "the table holds the {RULES} rules"
    );
    assert!(
        under == without,
        "iptables-legacy-save under the programs differs from without them"
    );
    Ok(())
}

/// Connects made by the attach point's own tasks are never steered: on a node (programs on the
/// root cgroup) those are the kernel's threads, whose sockets (NFS, CIFS, ceph) would otherwise
/// be rewritten. In the lab the attach point is the lab's cgroup, so a task placed in it stands
/// for them, and a task one level below is an ordinary pod.
#[test]
fn connects_from_the_attach_points_own_cgroup_are_not_steered() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    let service = sa(BACKEND4, SERVICE_PORT);
    lab.select(service)?;
    let root = lab.cgroup_root().to_path_buf();
    let mut from_root = l7r_lab::client::Client::connect(&lab.client_ns, &root, service)?;
    assert_eq!(
        from_root.ask("root")?,
        CLIENT4.parse::<std::net::IpAddr>()?,
        "direct"
    );
    let c = lab.dp().counters()?;
    assert_eq!((c.redirected, c.skipped_root_cgroup), (0, 1));
    let mut from_pod = lab.connect(service)?;
    assert_eq!(
        from_pod.ask("pod")?,
        NODE4_UPSTREAM.parse::<std::net::IpAddr>()?,
        "proxied"
    );
    assert_eq!(proxy.accepted_count(), 1);
    Ok(())
}
