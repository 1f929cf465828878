//! A backend "pod" for the long-stream measurement: it reads a connection to its end, then
//! answers the number of bytes it received (8 bytes, big-endian) and closes. The client times
//! the whole transfer and checks the count.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::Arc,
    thread,
};

use anyhow::{Context as _, Result};

use l7r_lab::netns::Netns;

/// The listening sink; stops accepting when dropped.
pub struct Sink {
    listener: Arc<TcpListener>,
}

impl Sink {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let listener = Arc::new(
            ns.run(move || TcpListener::bind(addr))?
                .with_context(|| format!("sink cannot listen on {addr}"))?,
        );
        let accept = Arc::clone(&listener);
        thread::spawn(move || {
            // Ends when the listener is shut down (accept then fails).
            while let Ok((stream, _)) = accept.accept() {
                thread::spawn(move || drain(stream));
            }
        });
        Ok(Self { listener })
    }
}

fn drain(mut stream: TcpStream) {
    // Large reads: the sink must not be what limits the measured throughput.
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
}

impl Drop for Sink {
    fn drop(&mut self) {
        // SAFETY: valid fd owned by the listener; shutdown(2) wakes the blocked accept(2).
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}
