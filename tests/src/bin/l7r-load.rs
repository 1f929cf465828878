//! `l7r-load`: a steady HTTP/1.1 load for the reliability tests. By default each request is
//! made on a new connection (`Connection: close`); with `--keep-alive` each worker keeps its
//! connection for request after request, as a pooled client does, and opens a new one only
//! when the server closes it after a response (`Connection: close`, as a draining Envoy
//! answers). Run in the client pod's namespace and cgroup; prints one line per request,
//! `<ms since start> ok envoy|direct` or `<ms> fail <why>`, and stops when its stdin closes.
//! A request that fails is not retried: an application without retries would have lost it.

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Parser;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(about = "New connections at a steady rate, one HTTP request each")]
struct Args {
    /// Where to connect (a ClusterIP and port).
    #[arg(long)]
    target: SocketAddr,
    /// The `Host:` header.
    #[arg(long, default_value = "web.shop")]
    host: String,
    /// Requests per second, over all workers (with `--keep-alive`, 0: each worker's requests
    /// back to back).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Concurrent workers; each has at most one connection open.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Keep each worker's connection open across requests.
    #[arg(long)]
    keep_alive: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<String>();
    let period = if args.keep_alive && args.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(f64::from(args.workers) / f64::from(args.rate.max(1)))
    };
    let keep_alive = args.keep_alive;
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (stop, tx, host) = (Arc::clone(&stop), tx.clone(), args.host.clone());
        let target = args.target;
        workers.push(thread::spawn(move || {
            // Spread the workers' starts over one period.
            let mut next = started + period.mul_f64(f64::from(w) / f64::from(args.workers));
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
                next += period;
                let at = started.elapsed().as_millis();
                let outcome = if keep_alive {
                    kept_alive_request(&mut conn, target, &host)
                } else {
                    request(target, &host)
                };
                let line = match outcome {
                    Ok(true) => format!("{at} ok envoy"),
                    Ok(false) => format!("{at} ok direct"),
                    Err(e) => format!("{at} fail {}", e.to_string().replace('\n', " ")),
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut out = io::stdout().lock();
    for line in rx {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One request on a new connection; `Ok(true)` when Envoy answered (`server: envoy`).
fn request(target: SocketAddr, host: &str) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(
        format!("GET /load HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        // Say how far the answer got: nothing, or a response whose connection was not closed.
        let first = response.split(|b| *b == b'\n').next().unwrap_or_default();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "{e} after {} bytes ({:?})",
                response.len(),
                String::from_utf8_lossy(first).trim()
            ),
        ));
    }
    let mut lines = io::BufReader::new(&response[..]).lines();
    let status = lines.next().transpose()?.unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::other(format!("answered {status:?}")));
    }
    let via_envoy = lines
        .map_while(Result::ok)
        .take_while(|l| !l.is_empty())
        .any(|l| l.to_ascii_lowercase().trim() == "server: envoy");
    Ok(via_envoy)
}

/// A connection kept across requests.
struct Conn {
    reader: io::BufReader<TcpStream>,
    writer: TcpStream,
}

/// One request on the worker's connection (a new one if it has none); `Ok(true)` when Envoy
/// answered. The connection is dropped after an error, or when the response says
/// `Connection: close`.
fn kept_alive_request(slot: &mut Option<Conn>, target: SocketAddr, host: &str) -> io::Result<bool> {
    let conn = match slot {
        Some(conn) => conn,
        None => {
            let stream = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT)?;
            stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
            stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
            slot.insert(Conn {
                reader: io::BufReader::new(stream.try_clone()?),
                writer: stream,
            })
        }
    };
    let result = exchange(conn, host);
    if !matches!(result, Ok((_, true))) {
        *slot = None;
    }
    result.map(|(via_envoy, _)| via_envoy)
}

/// Writes a request and reads its response: (answered by Envoy, the connection may be reused).
fn exchange(conn: &mut Conn, host: &str) -> io::Result<(bool, bool)> {
    conn.writer
        .write_all(format!("GET /load HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut status = String::new();
    if conn.reader.read_line(&mut status)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection before answering",
        ));
    }
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::other(format!("answered {:?}", status.trim())));
    }
    let (mut length, mut reusable, mut via_envoy) = (0usize, true, false);
    loop {
        let mut line = String::new();
        if conn.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection in the response head",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = value
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad content-length {value:?}")))?;
            }
            "connection" => reusable = !value.eq_ignore_ascii_case("close"),
            "server" => via_envoy = value == "envoy",
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    conn.reader.read_exact(&mut body)?;
    Ok((via_envoy, reusable))
}
