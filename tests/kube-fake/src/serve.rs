//! Listening and serving, with an outage switch: stopping drops the listener and every open
//! connection (and so every watch stream) at once, as a crashed API server would.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use socket2::{Domain, Socket, Type};
use tokio::{runtime::Handle, task::JoinHandle, task::JoinSet};

/// How long to retry binding a port that is still held (a previous run's sockets in
/// TIME_WAIT, or a listener not yet closed).
const BIND_PATIENCE: Duration = Duration::from_secs(5);

/// How long stopping may take to close every connection.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// Binds `addr` with `SO_REUSEADDR`, so the same port can be bound again right after an
/// outage, retrying while it is in use.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let deadline = Instant::now() + BIND_PATIENCE;
    loop {
        match try_bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
        }
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    // Tokio takes over the socket and requires it non-blocking.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A running server: its accept loop, which owns every connection.
pub struct Serving {
    task: JoinHandle<()>,
    /// One clone per live connection task (and one in the accept loop), so stopping can
    /// wait until every connection is closed.
    live: Arc<()>,
}

impl Serving {
    /// Serves `router` on `listener` on `runtime`.
    pub fn start(runtime: &Handle, listener: TcpListener, router: Router) -> Self {
        let live = Arc::new(());
        let task = runtime.spawn(accept(listener, router, live.clone()));
        Self { task, live }
    }

    /// Stops: closes the listener and every connection, and waits until they are closed.
    pub fn stop(self) -> Result<()> {
        self.task.abort();
        let deadline = Instant::now() + STOP_PATIENCE;
        // Polled, not awaited, so that stopping works from any thread, inside a runtime or
        // not.
        while !self.task.is_finished() || Arc::strong_count(&self.live) > 1 {
            if Instant::now() > deadline {
                bail!("the API server's connections did not close within {STOP_PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

async fn accept(listener: TcpListener, router: Router, live: Arc<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("kube-api: cannot serve: {e}");
            return;
        }
    };
    // Dropping the set (when this task is aborted) aborts every connection task in it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(router.clone());
                    let token = live.clone();
                    connections.spawn(async move {
                        let _token = token;
                        // A client that goes away mid-request is not the server's error.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Such as running out of file descriptors: transient, so wait and go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next() => {}
        }
    }
}
