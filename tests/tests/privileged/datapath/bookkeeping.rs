//! The per-connection records under the hard cases: a proxy slower than its clients, a socket
//! that connects again, a fixed source port, another socket that looks like a steered client.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use l7r_lab::{
    cgroups::in_cgroup,
    client::IO_TIMEOUT,
    lab::{
        BACKEND4, BACKEND6, CLIENT4, CLIENT6, Lab, LabOptions, NODE4, NODE4_UPSTREAM, OTHER_PORT,
        PROXY_PORT, PROXY_PORTS, SERVICE_PORT, sa,
    },
    proxy::{Upstream, original_dst},
    sys::run,
};
use redirector_common::{Endpoint, proxy_port_for};
use socket2::{Domain, SockAddr, Socket, Type};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

fn service() -> SocketAddr {
    sa(BACKEND4, SERVICE_PORT)
}

/// How many write-then-close clients: the thousand on the host, fewer in an emulated VM
/// (each is a connection through the proxy, and TCG is several times slower).
fn write_and_close_rounds() -> usize {
    if l7r_lab::sys::in_vm() { 200 } else { 1000 }
}

/// A client that connects, writes one line and closes at once (`nc -q0`) must reach the backend
/// through a proxy that takes 200 ms to ask for the original destination: the client socket is
/// closed (its FIN acknowledged by the proxy's kernel) long before that.
#[test]
fn write_then_close_clients_reach_the_backend_through_a_slow_proxy() -> Result<()> {
    let rounds = write_and_close_rounds();
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy_with(Upstream::Plain, Duration::from_millis(200))?;
    lab.select(service())?;
    let sent: Vec<String> = (0..rounds).map(|i| format!("message {i}")).collect();
    let lines = sent.clone();
    in_cgroup(&lab.client_cgroup, || {
        lab.client_ns.run(move || -> Result<()> {
            for line in &lines {
                let mut stream = TcpStream::connect_timeout(&service(), IO_TIMEOUT)?;
                stream.write_all(format!("{line}\n").as_bytes())?;
                // Dropped at once: close(2) with the line in flight.
            }
            Ok(())
        })
    })???;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = lab.backend_received();
    while received.len() < rounds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        received = lab.backend_received();
    }
    let c = lab.dp().counters()?;
    assert_eq!(
        received.len(),
        rounds,
        "lines lost on the way (original destination found {} times, not found {})",
        c.orig_dst_found,
        c.orig_dst_not_found
    );
    assert_eq!(c.orig_dst_found, rounds as u64);
    // The proxy closed its side of each: nothing is left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.dp().orig_dst_entries()?.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.dp().orig_dst_entries()?.is_empty(), "records left");
    Ok(())
}

/// A socket bound to `local` (address reuse on, so two sockets can share it), connected to
/// `dst` from the client pod.
fn bound_connect(
    lab: &Lab,
    local: SocketAddr,
    dst: SocketAddr,
) -> Result<std::io::Result<TcpStream>> {
    in_cgroup(&lab.client_cgroup, || {
        lab.client_ns
            .run(move || -> Result<std::io::Result<TcpStream>> {
                let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&SockAddr::from(local))?;
                Ok(socket
                    .connect_timeout(&dst.into(), IO_TIMEOUT)
                    .map(|()| TcpStream::from(socket)))
            })
    })??
}

/// Two selected destinations whose steered connections go to different proxy ports.
fn two_destinations_on_different_proxy_ports() -> Result<(SocketAddr, SocketAddr)> {
    let port_of = |d: SocketAddr| proxy_port_for(&Endpoint::from(d), PROXY_PORT, PROXY_PORTS);
    let first = service();
    for port in 9000..9100 {
        let other = sa(BACKEND4, port);
        if port_of(other) != port_of(first) {
            return Ok((first, other));
        }
    }
    bail!("no destination hashes to another proxy port than {first}")
}

/// A client with a fixed source port reaches two selected Services, as it does directly: their
/// steered connections go to different proxy ports, so their 4-tuples differ.
#[test]
fn a_fixed_source_port_reaches_two_selected_destinations() -> Result<()> {
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let (a, b) = two_destinations_on_different_proxy_ports()?;
    lab.select(a)?;
    lab.select(b)?;
    let local = sa(CLIENT4, 41000);
    let first = bound_connect(&lab, local, a)?.context("the first connect")?;
    let second = bound_connect(&lab, local, b)?.context(
        "the second connect from the same source port (EADDRNOTAVAIL: one 4-tuple space)",
    )?;
    for stream in [first, second] {
        assert_eq!(stream.local_addr()?, local);
    }
    assert_eq!(lab.dp().counters()?.redirected, 2);
    Ok(())
}

/// A socket that connects again after a steered connect failed, this time to a destination that
/// is not selected, keeps no trace of the first: `getpeername` tells the real peer, and no record
/// is published for the proxy.
#[test]
fn a_socket_that_connects_again_after_a_failed_steered_connect_keeps_no_record() -> Result<()> {
    let mut lab = Lab::new()?;
    // No proxy listens, but the config says it is ready: the steered connect is refused.
    lab.select(service())?;
    let other = sa(BACKEND4, OTHER_PORT);
    let (peer, local) = in_cgroup(&lab.client_cgroup, || {
        lab.client_ns
            .run(move || -> Result<(SocketAddr, SocketAddr)> {
                // Blocking connects: after a failed one the socket may connect again (after a
                // failed non-blocking one, the next connect answers ECONNABORTED first).
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.set_write_timeout(Some(IO_TIMEOUT))?;
                let refused = socket.connect(&service().into());
                ensure!(
                    refused.is_err(),
                    "the steered connect should be refused: {refused:?}"
                );
                socket
                    .connect(&other.into())
                    .context("the second connect, on the same socket")?;
                let stream = TcpStream::from(socket);
                Ok((stream.peer_addr()?, stream.local_addr()?))
            })
    })???;
    assert_eq!(peer, other, "getpeername tells the real peer");
    let records = lab.dp().orig_dst_entries()?;
    assert!(
        !records
            .iter()
            .any(|(client, _)| SocketAddr::from(*client) == local),
        "a record for the direct connection: {records:?}"
    );
    Ok(())
}

/// Another listener on the node (a sidecar's, say) that accepts a connection whose client
/// address and port equal those of a steered connection gets the kernel's own answer to
/// `SO_ORIGINAL_DST`, not the steered connection's original destination.
#[test]
fn only_the_proxy_gets_original_destinations() -> Result<()> {
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let local = sa(CLIENT4, 42000);
    let steered = bound_connect(&lab, local, service())?.context("the steered connection")?;
    assert!(
        lab.dp()
            .orig_dst_entries()?
            .iter()
            .any(|(client, _)| SocketAddr::from(*client) == local),
        "the steered connection is tracked"
    );
    // The sidecar: a listener in the same pod's cgroup, on another port of the node.
    let sidecar_addr = sa(NODE4, 16001);
    let sidecar = in_cgroup(&lab.client_cgroup, || {
        lab.node_ns.run(move || TcpListener::bind(sidecar_addr))
    })???;
    let _lookalike = bound_connect(&lab, local, sidecar_addr)?.context("the look-alike")?;
    let (accepted, peer) = sidecar.accept()?;
    assert_eq!(
        peer, local,
        "same client address and port as the steered connection"
    );
    let answer = original_dst(&accepted);
    assert!(
        answer.is_err(),
        "the sidecar got {answer:?}; the kernel's own answer (no NAT here) is an error"
    );
    drop(steered);
    Ok(())
}

/// A connection made to the proxy directly (not steered) gets the proxy's own address as its
/// original destination: "none", said the same way on every kernel.
#[test]
fn a_direct_connection_to_the_proxy_has_its_own_address_as_original_destination() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::None)?;
    let direct = sa(NODE4, PROXY_PORT + 3);
    let stream = in_cgroup(&lab.client_cgroup, || {
        lab.client_ns
            .run(move || TcpStream::connect_timeout(&direct, IO_TIMEOUT))
    })???;
    let deadline = Instant::now() + IO_TIMEOUT;
    while proxy.accepted_count() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let accepted = proxy.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].orig_dst, Some(direct));
    let c = lab.dp().counters()?;
    assert_eq!((c.orig_dst_found, c.orig_dst_not_found), (0, 1));
    drop(stream);
    Ok(())
}

/// An IPv6 destination with no IPv6 proxy configured goes direct, counted as such (not as "proxy
/// not ready").
#[test]
fn without_an_ipv6_proxy_ipv6_destinations_go_direct_and_say_why() -> Result<()> {
    let mut lab = Lab::with(LabOptions {
        proxy6: false,
        ..LabOptions::default()
    })?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let service6 = sa(BACKEND6, SERVICE_PORT);
    lab.select(service6)?;
    lab.select(service())?;
    let mut client = lab.connect(service6)?;
    assert_eq!(client.ask("v6")?, ip(CLIENT6), "direct");
    let mut client = lab.connect(service())?;
    assert_eq!(
        client.ask("v4")?,
        ip(NODE4_UPSTREAM),
        "the IPv4 proxy still works"
    );
    let c = lab.dp().counters()?;
    assert_eq!((c.skipped_no_proxy, c.skipped_proxy_not_ready), (1, 0));
    assert_eq!(client.peer_addr()?, service());
    Ok(())
}

/// Every program of the lab attached a second time to the lab's cgroup, after the first, as the
/// daemon's link replacement leaves them for a moment (the previous run's program runs first,
/// then the new one). Attached with bpftool (`BPF_PROG_ATTACH`, multi), detached on drop.
struct SecondAttachment {
    cgroup: String,
    attached: Vec<(&'static str, String)>,
}

impl SecondAttachment {
    fn of(lab: &Lab) -> Result<Self> {
        let mut second = Self {
            cgroup: lab.cgroup_root().to_string_lossy().into_owned(),
            attached: Vec::new(),
        };
        for (program, attach_type) in [
            ("connect4", "connect4"),
            ("connect6", "connect6"),
            ("track_connection", "sock_ops"),
            ("getsockopt", "getsockopt"),
            ("getpeername4", "getpeername4"),
            ("getpeername6", "getpeername6"),
        ] {
            let pin = lab.pin_dir.join("links").join(program);
            let info = run(
                "bpftool",
                &["-j", "link", "show", "pinned", &pin.to_string_lossy()],
            )?;
            let info: serde_json::Value = serde_json::from_str(&info)
                .with_context(|| format!("bpftool link show pinned {}: {info}", pin.display()))?;
            let id = info["prog_id"]
                .as_u64()
                .with_context(|| format!("no prog_id for {program}: {info}"))?
                .to_string();
            run(
                "bpftool",
                &[
                    "cgroup",
                    "attach",
                    &second.cgroup,
                    attach_type,
                    "id",
                    &id,
                    "multi",
                ],
            )?;
            second.attached.push((attach_type, id));
        }
        Ok(second)
    }
}

impl Drop for SecondAttachment {
    fn drop(&mut self) {
        for (attach_type, id) in &self.attached {
            if let Err(e) = run(
                "bpftool",
                &["cgroup", "detach", &self.cgroup, attach_type, "id", id],
            ) {
                eprintln!("cannot detach the second {attach_type} program: {e:#}");
            }
        }
    }
}

/// While links are replaced both generations run on every connect: the second sees the proxy's
/// address the first wrote. Each connection must still be steered once, reach the backend with
/// its original destination, and be counted once.
#[test]
fn connections_made_while_links_are_replaced_keep_their_destination() -> Result<()> {
    const CONNECTIONS: u64 = 20;
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let second = SecondAttachment::of(&lab)?;
    let before = lab.dp().counters()?;
    for i in 0..CONNECTIONS {
        let mut client = lab.connect(service())?;
        let seen = client
            .ask(&format!("during replacement {i}"))
            .with_context(|| format!("connection {i} made while both programs run"))?;
        assert_eq!(
            seen,
            ip(NODE4_UPSTREAM),
            "connection {i} went through the proxy"
        );
        assert_eq!(
            client.peer_addr()?,
            service(),
            "getpeername of connection {i}"
        );
    }
    let after = lab.dp().counters()?;
    assert_eq!(
        after.redirected - before.redirected,
        CONNECTIONS,
        "steered once each"
    );
    assert_eq!(after.orig_dst_found - before.orig_dst_found, CONNECTIONS);
    assert_eq!(after.orig_dst_not_found - before.orig_dst_not_found, 0);
    drop(second);
    Ok(())
}
