//! Steering: what goes through the proxy and what does not, with what original destination.
//!
//! The backend answers with the peer address it saw, so "proxied" is observable end to end:
//! the node's address means the connection came through the proxy, the client's means direct.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use l7r_lab::{
    cgroups::in_cgroup,
    client::IO_TIMEOUT,
    lab::{
        BACKEND4, BACKEND6, CLIENT4, CLIENT6, Lab, LabOptions, NODE4, NODE4_UPSTREAM,
        NODE6_UPSTREAM, OTHER_PORT, SERVICE_PORT, sa,
    },
    proxy::Upstream,
};
use redirector::dataplane::attached_programs;
use socket2::{Domain, Socket, Type};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

fn service() -> SocketAddr {
    sa(BACKEND4, SERVICE_PORT)
}

#[test]
fn selected_destination_goes_through_the_proxy_with_its_original_destination() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;

    let mut client = lab.connect(service())?;
    assert_eq!(
        client.ask("hello")?,
        ip(NODE4_UPSTREAM),
        "the backend must see the proxy"
    );
    assert_eq!(
        client.peer_addr()?,
        service(),
        "getpeername must show the Service"
    );

    let accepted = proxy.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "exactly one connection at the proxy: {accepted:?}"
    );
    assert_eq!(accepted[0].peer, client.local_addr()?);
    assert_eq!(accepted[0].orig_dst, Some(service()), "SO_ORIGINAL_DST");

    let c = lab.dp().counters()?;
    assert_eq!(c.redirected, 1);
    assert_eq!(c.orig_dst_found, 1);
    assert_eq!(c.skipped_excluded, 1, "the proxy's own upstream connect");
    Ok(())
}

#[test]
fn unselected_destination_goes_direct() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;

    let other = sa(BACKEND4, OTHER_PORT);
    let mut client = lab.connect(other)?;
    assert_eq!(
        client.ask("hello")?,
        ip(CLIENT4),
        "the backend must see the client itself"
    );
    assert_eq!(client.peer_addr()?, other);
    assert_eq!(proxy.accepted_count(), 0, "the proxy must see nothing");
    let c = lab.dp().counters()?;
    assert_eq!((c.seen, c.redirected), (1, 0));
    Ok(())
}

#[test]
fn udp_is_never_touched() -> Result<()> {
    let mut lab = Lab::new()?;
    lab.select(service())?;
    let peer = in_cgroup(&lab.client_cgroup, || {
        lab.client_ns.run(|| -> Result<SocketAddr> {
            let udp = UdpSocket::bind("0.0.0.0:0")?;
            udp.connect(service())?;
            Ok(udp.peer_addr()?)
        })
    })???;
    assert_eq!(peer, service());
    assert_eq!(
        lab.dp().counters()?.seen,
        0,
        "UDP connects are not even counted"
    );
    Ok(())
}

#[test]
fn connection_opened_before_selection_stays_direct() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;

    let mut early = lab.connect(service())?;
    assert_eq!(early.ask("before")?, ip(CLIENT4));
    lab.select(service())?;
    for i in 0..5 {
        assert_eq!(
            early.ask(&format!("after {i}"))?,
            ip(CLIENT4),
            "an existing connection must keep its direct path"
        );
    }
    let mut late = lab.connect(service())?;
    assert_eq!(
        late.ask("new")?,
        ip(NODE4_UPSTREAM),
        "a new connection is proxied"
    );
    assert_eq!(early.ask("still")?, ip(CLIENT4));
    assert_eq!(proxy.accepted_count(), 1);
    Ok(())
}

#[test]
fn proxied_connection_survives_deselection() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;

    let mut proxied = lab.connect(service())?;
    assert_eq!(proxied.ask("selected")?, ip(NODE4_UPSTREAM));
    lab.deselect(service())?;
    for i in 0..5 {
        assert_eq!(
            proxied.ask(&format!("deselected {i}"))?,
            ip(NODE4_UPSTREAM),
            "a proxied connection keeps going through the proxy to its end"
        );
    }
    let mut fresh = lab.connect(service())?;
    assert_eq!(
        fresh.ask("new")?,
        ip(CLIENT4),
        "a new connection goes direct"
    );
    assert_eq!(proxied.peer_addr()?, service());
    assert_eq!(proxy.accepted_count(), 1);
    Ok(())
}

#[test]
fn proxy_not_ready_fails_open() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    lab.dp().set_proxy_ready(false, false)?;

    let mut client = lab.connect(service())?;
    assert_eq!(client.ask("down")?, ip(CLIENT4), "proxy not ready: direct");
    assert_eq!(proxy.accepted_count(), 0);
    assert_eq!(lab.dp().counters()?.skipped_proxy_not_ready, 1);

    lab.dp().set_proxy_ready(true, true)?;
    let mut client = lab.connect(service())?;
    assert_eq!(
        client.ask("up")?,
        ip(NODE4_UPSTREAM),
        "ready again: proxied"
    );
    Ok(())
}

/// Runs one proxied request with the given loop prevention and checks the proxy saw exactly
/// the client's connection, not its own upstream.
fn proxied_once_without_loop(options: LabOptions, upstream: Upstream) -> Result<()> {
    let mut lab = Lab::with(options)?;
    let proxy = lab.start_proxy(upstream)?;
    lab.select(service())?;
    let mut client = lab.connect(service())?;
    assert_eq!(client.ask("hello")?, ip(NODE4_UPSTREAM));
    let accepted = proxy.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "the upstream connection looped back: {accepted:?}"
    );
    let c = lab.dp().counters()?;
    assert_eq!((c.redirected, c.skipped_excluded), (1, 1));
    Ok(())
}

#[test]
fn proxy_upstream_excluded_by_cgroup_is_not_steered() -> Result<()> {
    proxied_once_without_loop(LabOptions::default(), Upstream::Plain)
}

#[test]
fn proxy_upstream_excluded_by_uid_is_not_steered() -> Result<()> {
    let options = LabOptions {
        exclude_uids: vec![4242],
        ..LabOptions::nothing_excluded()
    };
    proxied_once_without_loop(options, Upstream::Uid(4242))
}

#[test]
fn proxy_upstream_excluded_by_mark_is_not_steered() -> Result<()> {
    let options = LabOptions {
        exclude_mark: Some((0x4000, 0x4000)),
        ..LabOptions::nothing_excluded()
    };
    // Other bits of the mark are the proxy's business; only the masked bit counts.
    proxied_once_without_loop(options, Upstream::Mark(0x4123))
}

/// The negative control for the three tests above: without any exclusion the proxy's upstream
/// is steered back to itself, and the fixture sees it.
#[test]
fn without_exclusion_the_proxy_upstream_loops() -> Result<()> {
    let mut lab = Lab::with(LabOptions::nothing_excluded())?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let mut client = lab.connect(service())?;
    assert!(
        client.ask("hello").is_err(),
        "the looped request cannot be answered"
    );
    let accepted = proxy.accepted();
    assert!(
        accepted.iter().any(|a| a.peer.ip() == ip(NODE4)),
        "the proxy must have accepted its own upstream: {accepted:?}"
    );
    Ok(())
}

#[test]
fn ipv6_destination_is_steered_to_the_ipv6_proxy() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    let service6 = sa(BACKEND6, SERVICE_PORT);
    lab.select(service6)?;

    let mut client = lab.connect(service6)?;
    assert_eq!(client.ask("hello")?, ip(NODE6_UPSTREAM));
    assert_eq!(
        client.peer_addr()?,
        service6,
        "getpeername6 shows the Service"
    );
    let accepted = proxy.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].peer.ip(), ip(CLIENT6));
    assert_eq!(accepted[0].orig_dst, Some(service6), "IP6T_SO_ORIGINAL_DST");

    let mut other = lab.connect(sa(BACKEND6, OTHER_PORT))?;
    assert_eq!(other.ask("direct")?, ip(CLIENT6));
    Ok(())
}

#[test]
fn ipv4_mapped_destination_on_a_dual_stack_socket_is_steered() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;

    let mapped: SocketAddr = format!("[::ffff:{BACKEND4}]:{SERVICE_PORT}").parse()?;
    let mut client = lab.connect(mapped)?;
    assert_eq!(client.ask("hello")?, ip(NODE4_UPSTREAM));
    assert_eq!(
        client.peer_addr()?,
        mapped,
        "getpeername6 shows the mapped Service"
    );
    let accepted = proxy.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].peer.ip(), ip(CLIENT4), "IPv4 on the wire");
    assert_eq!(accepted[0].orig_dst, Some(service()));
    Ok(())
}

#[test]
fn restart_in_a_new_process_keeps_connections_and_selection() -> Result<()> {
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let root = lab
        .client_cgroup
        .parent()
        .context("cgroup root")?
        .to_path_buf();
    assert_eq!(attached_programs(&root)?, 6);

    let mut proxied = lab.connect(service())?;
    let mut direct = lab.connect(sa(BACKEND4, OTHER_PORT))?;
    assert_eq!(proxied.ask("before")?, ip(NODE4_UPSTREAM));
    assert_eq!(direct.ask("before")?, ip(CLIENT4));
    let selection = lab.dp().services()?;

    lab.restart_dataplane_in_new_process(crate::DATAPLANE_CTL)?;

    assert_eq!(lab.dp().services()?, selection, "selection unchanged");
    assert_eq!(
        attached_programs(&root)?,
        6,
        "old links replaced, not added to"
    );
    for i in 0..3 {
        assert_eq!(proxied.ask(&format!("after {i}"))?, ip(NODE4_UPSTREAM));
        assert_eq!(direct.ask(&format!("after {i}"))?, ip(CLIENT4));
    }
    assert_eq!(proxied.peer_addr()?, service());
    let mut fresh = lab.connect(service())?;
    assert_eq!(
        fresh.ask("new")?,
        ip(NODE4_UPSTREAM),
        "the new programs steer"
    );
    assert_eq!(proxy.accepted_count(), 2);
    Ok(())
}

/// How many connections the churn test makes: a hundred thousand on the host; in a VM, whose CPU
/// is emulated and several times slower, five thousand, which still fill and empty `orig_dst`
/// many times over the per-test limit of the matrix.
fn churn_connections() -> u64 {
    if l7r_lab::sys::in_vm() {
        5_000
    } else {
        100_000
    }
}

#[test]
fn connection_churn_leaves_no_bookkeeping() -> Result<()> {
    let connections = churn_connections();
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::None)?;
    lab.select(service())?;
    let before = lab.dp().counters()?;

    let started = Instant::now();
    // One cgroup move for the whole loop: each connect comes from the client pod.
    in_cgroup(&lab.client_cgroup, || {
        lab.client_ns.run(move || -> Result<()> {
            for i in 0..connections {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.set_read_timeout(Some(IO_TIMEOUT))?;
                socket
                    .connect_timeout(&service().into(), IO_TIMEOUT)
                    .with_context(|| format!("connection {i}"))?;
                // The proxy answers SO_ORIGINAL_DST and closes; wait for that, then close.
                let mut stream = TcpStream::from(socket);
                if stream.read(&mut [0u8; 1])? != 0 {
                    bail!("connection {i}: expected the proxy to close");
                }
            }
            Ok(())
        })
    })???;
    eprintln!("{connections} connections in {:?}", started.elapsed());

    // Closing completes when the last ACK arrives; give the kernel a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = lab.dp().orig_dst_entries()?;
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        left = lab.dp().orig_dst_entries()?;
    }
    assert!(
        left.is_empty(),
        "{} stale orig_dst entries, e.g. {:?}",
        left.len(),
        left.first()
    );

    let after = lab.dp().counters()?;
    assert_eq!(after.redirected - before.redirected, connections);
    assert_eq!(after.orig_dst_found - before.orig_dst_found, connections);
    assert_eq!(proxy.accepted_count() as u64, connections);
    Ok(())
}
