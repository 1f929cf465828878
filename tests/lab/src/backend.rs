//! A backend "pod": a line server that answers each line with the peer address it saw, so a
//! test can tell a direct connection (peer = the client) from a proxied one (peer = the node).
//! It also keeps every line it received, for clients that send and leave without reading.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// Listening sockets of the backend; accept loops stop when dropped.
pub struct Backend {
    listeners: Vec<Arc<TcpListener>>,
    received: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    /// Listens on each address inside `ns`.
    pub fn start(ns: &Netns, addrs: &[SocketAddr]) -> Result<Self> {
        let mut listeners = Vec::new();
        let received = Arc::new(Mutex::new(Vec::new()));
        for &addr in addrs {
            let listener = ns
                .run(move || TcpListener::bind(addr))?
                .with_context(|| format!("backend cannot listen on {addr}"))?;
            let listener = Arc::new(listener);
            let accept = Arc::clone(&listener);
            let log = Arc::clone(&received);
            thread::spawn(move || {
                // Ends when the listener is shut down (accept then fails).
                while let Ok((stream, peer)) = accept.accept() {
                    let log = Arc::clone(&log);
                    thread::spawn(move || serve(stream, peer, &log));
                }
            });
            listeners.push(listener);
        }
        Ok(Self {
            listeners,
            received,
        })
    }

    /// Every line received so far, on any connection.
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, log: &Mutex<Vec<String>>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        // A client that sent and left does not read the answer.
        let _ = writeln!(out, "{} {line}", peer.ip());
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        for l in &self.listeners {
            // shutdown(2) on a listening socket wakes a blocked accept(2) on Linux.
            // SAFETY: valid fd owned by the listener.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}
