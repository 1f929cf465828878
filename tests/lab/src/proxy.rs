//! A minimal node proxy for the datapath tests (so they do not depend on Envoy): it accepts,
//! asks the kernel for the connection's original destination with `SO_ORIGINAL_DST` exactly as
//! Envoy's `original_dst` listener filter does, records what it saw, and forwards.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use redirector_common::{IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6};
use socket2::{Domain, Socket, Type};

use crate::{
    cgroups::{in_cgroup, on_new_thread},
    netns::Netns,
};

/// A listening socket with the backlog Envoy's listeners get by default (`net.core.somaxconn`,
/// which the kernel caps this at), rather than std's 128: a burst of connects must not
/// overflow the accept queue, whose dropped SYNs the kernel programs take for a proxy that
/// stopped answering.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// How the proxy makes its upstream connection: the loop-prevention tests each exclude it
/// from steering a different way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A plain connect from the proxy's cgroup.
    Plain,
    /// The upstream socket carries this `SO_MARK`.
    Mark(u32),
    /// The upstream connect is made by a thread running as this UID.
    Uid(u32),
    /// No upstream: answer `SO_ORIGINAL_DST`, then close (connection churn).
    None,
}

/// One accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The client as the proxy sees it.
    pub peer: SocketAddr,
    /// What `SO_ORIGINAL_DST` answered, if anything.
    pub orig_dst: Option<SocketAddr>,
}

/// The running proxy; stops accepting when dropped.
pub struct TestProxy {
    listeners: Vec<Arc<TcpListener>>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

impl TestProxy {
    /// Listens on `addrs` inside `ns`, with its sockets in `cgroup`; each accepted connection
    /// waits `delay` before the proxy asks for its original destination.
    pub fn start(
        ns: &Netns,
        cgroup: &Path,
        addrs: &[SocketAddr],
        upstream: Upstream,
        delay: Duration,
    ) -> Result<Self> {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let own_addrs: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        let mut listeners = Vec::new();
        for &addr in addrs {
            let listener = in_cgroup(cgroup, || ns.run(move || listen(addr)))??
                .with_context(|| format!("proxy cannot listen on {addr}"))?;
            let listener = Arc::new(listener);
            let accept = Arc::clone(&listener);
            let log = Arc::clone(&accepted);
            let cgroup = cgroup.to_path_buf();
            let own = own_addrs.clone();
            ns.spawn(move || {
                while let Ok((stream, peer)) = accept.accept() {
                    let log = Arc::clone(&log);
                    let cgroup = cgroup.clone();
                    let own = own.clone();
                    thread::spawn(move || {
                        thread::sleep(delay);
                        handle(stream, peer, upstream, &cgroup, &own, &log)
                    });
                }
            })?;
            listeners.push(listener);
        }
        Ok(Self {
            listeners,
            accepted,
        })
    }

    /// Every connection accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many connections were accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: valid fd owned by the listener; wakes the blocked accept(2).
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

fn handle(
    client: TcpStream,
    peer: SocketAddr,
    upstream: Upstream,
    cgroup: &Path,
    own: &[IpAddr],
    log: &Mutex<Vec<Accepted>>,
) {
    let orig_dst = original_dst(&client).ok();
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Accepted { peer, orig_dst });
    // A connection from ourselves means our upstream was steered back to us: a loop. Record it
    // (the test fails on it) but do not feed it.
    if own.contains(&peer.ip()) || upstream == Upstream::None {
        return;
    }
    let Some(dst) = orig_dst else { return };
    let Ok(Ok(server)) = in_cgroup(cgroup, || {
        on_new_thread(move || connect_upstream(dst, upstream))
    }) else {
        return;
    };
    pump(client, server);
}

fn connect_upstream(dst: SocketAddr, upstream: Upstream) -> io::Result<TcpStream> {
    if let Upstream::Uid(uid) = upstream {
        // The raw syscall changes this thread's credentials only (glibc's setresuid would
        // change every thread of the process).
        // SAFETY: plain syscall with integer arguments.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    if let Upstream::Mark(mark) = upstream {
        socket.set_mark(mark)?;
    }
    socket.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

fn pump(client: TcpStream, server: TcpStream) {
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` for IPv4 sockets, `(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`
/// for IPv6 ones: what Envoy asks.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let (level, name) = if stream.local_addr()?.is_ipv4() {
        (SOL_IP, SO_ORIGINAL_DST)
    } else {
        (SOL_IPV6, IP6T_SO_ORIGINAL_DST)
    };
    // SAFETY: sockaddr_storage is plain data; getsockopt writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw mut storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sockaddr_to_std(&storage, len)
}

fn sockaddr_to_std(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<SocketAddr> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected original destination",
        )
    };
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(&raw const *storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(&raw const *storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => Err(bad()),
    }
}
