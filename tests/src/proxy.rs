//! A TCP forwarder on 127.0.0.1 that a test can freeze, to cut a process off from a
//! server without stopping either. While frozen, the forwarder delivers nothing in
//! either direction; bytes it has already read are held back and dropped when it
//! stops, never delivered late.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked threads check the stop and freeze flags.
const POLL: Duration = Duration::from_millis(10);

/// A forwarder from a free port on 127.0.0.1 to `127.0.0.1:target_port`.
pub struct FreezableProxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FreezableProxy {
    pub fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));

        let flags = (Arc::clone(&frozen), Arc::clone(&stop));
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept(listener, target_port, flags.0, flags.1))?;
        Ok(Self {
            port,
            frozen,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Base URL of the forwarder for an HTTP client.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops delivering bytes in both directions, on open and new connections alike.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target_port: u16, frozen: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => return,
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        for (from, to) in [(client, server), (server_copy, client_copy)] {
            let (frozen, stop) = (Arc::clone(&frozen), Arc::clone(&stop));
            // The copy threads end by themselves within POLL of the stop flag.
            let _ = std::thread::Builder::new()
                .name("proxy-copy".into())
                .spawn(move || copy(from, to, &frozen, &stop));
        }
    }
}

/// Copies bytes from `from` to `to` until either side closes or `stop` is set.
fn copy(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(POLL * 10));
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => break,
        };
        while frozen.load(Ordering::SeqCst) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(POLL);
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    if !frozen.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}
