//! A client "pod" connection: made from the client namespace and cgroup, with line helpers.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::{cgroups::in_cgroup, netns::Netns};

/// How long any single step may block before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `dst` from a socket created in `ns` and `cgroup`. An IPv4-mapped `dst` is
    /// dialled from a dual-stack IPv6 socket, as such programs do.
    pub fn connect(ns: &Netns, cgroup: &Path, dst: SocketAddr) -> Result<Self> {
        let stream = connect_stream(ns, cgroup, dst)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one line and returns the address the backend saw as its peer.
    pub fn ask(&mut self, line: &str) -> Result<IpAddr> {
        writeln!(self.writer, "{line}").context("send")?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply).context("receive")?;
        let Some((peer, echoed)) = reply.trim_end().split_once(' ') else {
            bail!("no reply (connection closed?): {reply:?}");
        };
        if echoed != line {
            bail!("backend echoed {echoed:?}, expected {line:?}");
        }
        peer.parse()
            .with_context(|| format!("bad peer in reply {reply:?}"))
    }

    /// What `getpeername` says.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.writer.peer_addr()?)
    }

    /// What `getsockname` says.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.writer.local_addr()?)
    }

    /// Waits until the other side closes (for connections to a proxy that only answers).
    pub fn wait_closed(mut self) -> Result<()> {
        let mut rest = String::new();
        self.reader
            .read_line(&mut rest)
            .context("waiting for close")?;
        Ok(())
    }
}

/// A TCP connection to `dst` from a socket created in `ns` and `cgroup`, with timeouts set.
/// An IPv6 `dst` (IPv4-mapped included) is dialled from a dual-stack socket.
pub fn connect_stream(ns: &Netns, cgroup: &Path, dst: SocketAddr) -> Result<TcpStream> {
    let stream = in_cgroup(cgroup, || {
        ns.run(move || -> Result<TcpStream> {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            if dst.is_ipv6() {
                socket.set_only_v6(false)?;
            }
            socket
                .connect_timeout(&dst.into(), IO_TIMEOUT)
                .with_context(|| format!("connect to {dst}"))?;
            Ok(socket.into())
        })
    })???;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}
