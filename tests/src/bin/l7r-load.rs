//! `l7r-load`: a steady load of new connections, one HTTP/1.1 request each
//! (`Connection: close`), for the reliability tests. Run in the client pod's namespace and
//! cgroup; prints one line per request, `<ms since start> ok envoy|direct` or
//! `<ms> fail <why>`, and stops when its stdin closes.

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
    /// New connections per second, over all workers.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Concurrent workers; each has at most one connection open.
    #[arg(long, default_value_t = 2)]
    workers: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<String>();
    let period = Duration::from_secs_f64(f64::from(args.workers) / f64::from(args.rate.max(1)));
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (stop, tx, host) = (Arc::clone(&stop), tx.clone(), args.host.clone());
        let target = args.target;
        workers.push(thread::spawn(move || {
            // Spread the workers' starts over one period.
            let mut next = started + period.mul_f64(f64::from(w) / f64::from(args.workers));
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
                next += period;
                let at = started.elapsed().as_millis();
                let line = match request(target, &host) {
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
    stream.read_to_end(&mut response)?;
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
