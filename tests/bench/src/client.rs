//! The measuring client: a loop of sequential connections (connect, one small request and its
//! answer, close), and one long stream, run from the lab's client "pod" (its namespace and
//! cgroup). Each connection's `connect()` is timed on its own, and so is the whole exchange.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use l7r_lab::{cgroups::in_cgroup, lab::Lab};

/// How long one connect, write or read may block before the benchmark fails instead of
/// hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The request a connection makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// One line to the lab's line-echo backend, which answers one line (`<peer> <line>`).
    Line,
    /// One HTTP/1.1 `GET` kept alive (so the client closes first, as with [`Exchange::Line`]);
    /// the answer is complete after its head and `Content-Length` body.
    Http,
}

impl Exchange {
    fn request(self) -> &'static [u8] {
        match self {
            Self::Line => b"ping\n",
            Self::Http => b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: l7r-bench\r\n\r\n",
        }
    }

    /// Whether `answer` is complete.
    fn complete(self, answer: &[u8]) -> bool {
        match self {
            Self::Line => answer.contains(&b'\n'),
            Self::Http => http_complete(answer),
        }
    }
}

/// Whether `answer` holds a whole HTTP response head and its `Content-Length` body.
fn http_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

/// ASCII case-insensitive substring test (`needle` already lower-case).
fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack.windows(needle.len()).any(|w| {
            w.iter()
                .map(u8::to_ascii_lowercase)
                .eq(needle.iter().copied())
        })
}

/// What the loop does on each connection.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Where it connects.
    pub dst: SocketAddr,
    /// What it asks.
    pub exchange: Exchange,
    /// Text every answer must contain (ASCII, case-insensitive): how the loop proves that each
    /// connection took the path under test (the backend saw the client itself, or the proxy;
    /// `server: envoy`), so a mis-set alternative fails instead of measuring the wrong thing.
    pub must_contain: Vec<String>,
}

/// What one batch of connections measured.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Each connection's `connect()` call, in nanoseconds.
    pub connect_ns: Vec<u64>,
    /// Each connection from the start of `connect()` to the complete answer, in nanoseconds.
    pub exchange_ns: Vec<u64>,
    /// Wall time of the whole batch, closes included.
    pub elapsed: Duration,
}

impl Batch {
    /// Connections per second over the batch.
    pub fn rate(&self) -> f64 {
        self.connect_ns.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn new_socket(dst: SocketAddr) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    // On Linux a blocking connect() honours SO_SNDTIMEO: a plain blocking connect (no
    // non-blocking connect + poll, which would add syscalls to what is measured) that still
    // cannot hang.
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(socket)
}

/// Runs `count` sequential connections from the calling thread (which must already be in the
/// client's namespace and cgroup; see [`in_client`]).
pub fn run_batch(w: &Workload, count: usize) -> Result<Batch> {
    let needles: Vec<Vec<u8>> = w
        .must_contain
        .iter()
        .map(|s| s.to_ascii_lowercase().into_bytes())
        .collect();
    let request = w.exchange.request();
    let dst = w.dst.into();
    let mut batch = Batch {
        connect_ns: Vec::with_capacity(count),
        exchange_ns: Vec::with_capacity(count),
        elapsed: Duration::ZERO,
    };
    let mut answer = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    for i in 0..count {
        let socket = new_socket(w.dst)?;
        let t0 = Instant::now();
        socket
            .connect(&dst)
            .with_context(|| format!("connection {i} to {}", w.dst))?;
        let connected = t0.elapsed();
        let mut stream = TcpStream::from(socket);
        stream.write_all(request).context("send")?;
        answer.clear();
        while !w.exchange.complete(&answer) {
            let n = stream
                .read(&mut buf)
                .with_context(|| format!("connection {i}: receive"))?;
            if n == 0 {
                bail!(
                    "connection {i} to {}: closed after {:?}",
                    w.dst,
                    String::from_utf8_lossy(&answer)
                );
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let done = t0.elapsed();
        if let Some(missing) = needles.iter().find(|n| !contains_ci(&answer, n)) {
            bail!(
                "connection {i} to {}: the answer lacks {:?}, so it did not take the path \
                 under test: {:?}",
                w.dst,
                String::from_utf8_lossy(missing),
                String::from_utf8_lossy(&answer)
            );
        }
        drop(stream);
        batch.connect_ns.push(connected.as_nanos() as u64);
        batch.exchange_ns.push(done.as_nanos() as u64);
    }
    batch.elapsed = started.elapsed();
    Ok(batch)
}

/// Sends `bytes` zero bytes on one connection to a [`crate::sink::Sink`] and waits for
/// its count; returns the time from `connect()` to the count.
pub fn stream(dst: SocketAddr, bytes: u64) -> Result<Duration> {
    let socket = new_socket(dst)?;
    let started = Instant::now();
    socket
        .connect(&dst.into())
        .with_context(|| format!("stream to {dst}"))?;
    let mut stream = TcpStream::from(socket);
    let chunk = vec![0u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).context("stream: send")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .context("stream: the sink's count")?;
    let elapsed = started.elapsed();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("stream to {dst}: the sink received {got} bytes, {bytes} were sent");
    }
    Ok(elapsed)
}

/// Runs `f` on a thread in the lab's client namespace, with the whole process in the client
/// cgroup (one move for the whole call, not one per connection: cgroup v2 moves processes,
/// and a move costs tens of microseconds). Nothing else in this process may move it meanwhile.
pub fn in_client<T: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    in_cgroup(&lab.client_cgroup, || lab.client_ns.run(f))??
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_answers_end_with_a_newline() {
        assert!(!Exchange::Line.complete(b"10.77.1.2 pi"));
        assert!(Exchange::Line.complete(b"10.77.1.2 ping\n"));
    }

    #[test]
    fn http_answers_need_the_whole_body() {
        let head = b"HTTP/1.1 200 OK\r\nServer: envoy\r\ncontent-length: 5\r\n\r\n";
        assert!(!Exchange::Http.complete(&head[..20]));
        let mut a = head.to_vec();
        assert!(!Exchange::Http.complete(&a));
        a.extend_from_slice(b"hell");
        assert!(!Exchange::Http.complete(&a));
        a.push(b'o');
        assert!(Exchange::Http.complete(&a));
        assert!(Exchange::Http.complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }

    #[test]
    fn case_insensitive_search() {
        assert!(contains_ci(
            b"HTTP/1.1 200\r\nServer: Envoy\r\n",
            b"server: envoy"
        ));
        assert!(!contains_ci(b"Server: backend", b"server: envoy"));
        assert!(contains_ci(b"x", b""));
    }
}
