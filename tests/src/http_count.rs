//! An HTTP/1.1 forwarder on 127.0.0.1 that records each request it passes on, so a
//! benchmark can count the calls a process makes to a server such as slurmrestd
//! without changing either side.
//!
//! Bytes go through unchanged in both directions. The forwarder reads request heads
//! on the client side to find where each request starts: it follows
//! `Content-Length` bodies on keep-alive connections. A chunked request body ends
//! the counting on its connection (the bytes still flow), and
//! [`CountingProxy::uncounted_connections`] reports how often that happened.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads check the stop flag.
const POLL: Duration = Duration::from_millis(10);

/// Largest request head the parser accepts before it stops counting a connection.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One request that went through the forwarder.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// When the forwarder had read the whole request head.
    pub at: Instant,
    pub method: String,
    /// Request target without the query string, such as `/slurm/v0.0.38/jobs`.
    pub path: String,
}

impl RecordedRequest {
    /// Method and path with numeric path segments replaced by `{id}`, such as
    /// `DELETE /slurm/v0.0.38/job/{id}`, to group requests by operation.
    pub fn operation(&self) -> String {
        let path: Vec<&str> = self
            .path
            .split('/')
            .map(|segment| {
                let numeric =
                    !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit() || c == '_');
                if numeric { "{id}" } else { segment }
            })
            .collect();
        format!("{} {}", self.method, path.join("/"))
    }
}

/// A counting forwarder from a free port on 127.0.0.1 to `127.0.0.1:target_port`.
pub struct CountingProxy {
    pub port: u16,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    uncounted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the acceptor and the copy threads of every connection.
#[derive(Clone)]
struct Shared {
    target_port: u16,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    uncounted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Starts forwarding to `127.0.0.1:target_port` from a free port.
    pub fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Shared {
            target_port,
            requests: Arc::default(),
            uncounted: Arc::default(),
            stop: Arc::default(),
        };

        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("http-count-{port}"))
                .spawn(move || accept(listener, shared))?
        };
        Ok(Self {
            port,
            requests: shared.requests,
            uncounted: shared.uncounted,
            stop: shared.stop,
            acceptor: Some(acceptor),
        })
    }

    /// Base URL of the forwarder for an HTTP client.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns every request recorded so far, in the order their heads were read.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .expect("request log lock is not poisoned")
            .clone()
    }

    /// Counts the connections on which counting stopped (a chunked body or an
    /// oversized head), so that later requests on them were not recorded.
    pub fn uncounted_connections(&self) -> u64 {
        self.uncounted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, shared: Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => return,
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target_port)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };

        let upstream = shared.clone();
        let _ = std::thread::Builder::new()
            .name("http-count-requests".into())
            .spawn(move || {
                let mut parser = RequestParser::default();
                copy(client, server, &upstream.stop, |bytes| {
                    parser.feed(bytes, &upstream)
                });
            });
        let stop = Arc::clone(&shared.stop);
        // The copy threads end by themselves within a read timeout of the stop flag.
        let _ = std::thread::Builder::new()
            .name("http-count-responses".into())
            .spawn(move || copy(server_copy, client_copy, &stop, |_| {}));
    }
}

/// Copies bytes from `from` to `to`, showing each read to `inspect` first, until
/// either side closes or `stop` is set.
fn copy(mut from: TcpStream, mut to: TcpStream, stop: &AtomicBool, mut inspect: impl FnMut(&[u8])) {
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
        inspect(&buffer[..read]);
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Parser state that finds where each request starts in the client's byte stream
/// of one connection.
#[derive(Default)]
struct RequestParser {
    /// Bytes of the current request head read so far.
    head: Vec<u8>,
    /// Body bytes of the current request still to come.
    body_left: usize,
    /// Set when the stream can no longer be split into requests.
    gave_up: bool,
}

impl RequestParser {
    fn feed(&mut self, mut data: &[u8], shared: &Shared) {
        while !data.is_empty() && !self.gave_up {
            if self.body_left > 0 {
                let skipped = self.body_left.min(data.len());
                self.body_left -= skipped;
                data = &data[skipped..];
                continue;
            }

            // Search from a few bytes back, so a marker split across reads is found.
            let searched_from = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(data);
            let Some(end) = find(&self.head[searched_from..], b"\r\n\r\n") else {
                if self.head.len() > MAX_HEAD_BYTES {
                    self.give_up(shared);
                }
                return;
            };
            let head_end = searched_from + end + 4;
            let rest = self.head.split_off(head_end);
            let head = std::mem::take(&mut self.head);
            self.start_request(&head, shared);

            // `rest` belongs to the body or to the next request, so it is fed again.
            // Recursion depth is bounded by the number of requests in one read.
            self.feed(&rest, shared);
            return;
        }
    }

    fn start_request(&mut self, head: &[u8], shared: &Shared) {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_string();
        shared
            .requests
            .lock()
            .expect("request log lock is not poisoned")
            .push(RecordedRequest {
                at: Instant::now(),
                method,
                path,
            });

        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                match value.parse() {
                    Ok(length) => self.body_left = length,
                    Err(_) => self.give_up(shared),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                self.give_up(shared);
            }
        }
    }

    fn give_up(&mut self, shared: &Shared) {
        if !self.gave_up {
            self.gave_up = true;
            shared.uncounted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            target_port: 0,
            requests: Arc::default(),
            uncounted: Arc::default(),
            stop: Arc::default(),
        }
    }

    fn operations(shared: &Shared) -> Vec<String> {
        shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(RecordedRequest::operation)
            .collect()
    }

    #[test]
    fn parser_splits_keep_alive_requests() {
        let shared = shared();
        let mut parser = RequestParser::default();
        let stream = b"GET /slurm/v0.0.38/jobs HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /slurm/v0.0.38/job/submit HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            DELETE /slurm/v0.0.38/job/42?signal=KILL HTTP/1.1\r\n\r\n";
        // Feed in small pieces, so heads and bodies straddle reads.
        for piece in stream.chunks(7) {
            parser.feed(piece, &shared);
        }
        assert_eq!(
            operations(&shared),
            [
                "GET /slurm/v0.0.38/jobs",
                "POST /slurm/v0.0.38/job/submit",
                "DELETE /slurm/v0.0.38/job/{id}",
            ]
        );
        assert_eq!(shared.uncounted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn parser_stops_at_chunked_body() {
        let shared = shared();
        let mut parser = RequestParser::default();
        let stream = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nGET /\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        parser.feed(stream, &shared);
        assert_eq!(operations(&shared), ["POST /a"]);
        assert_eq!(shared.uncounted.load(Ordering::SeqCst), 1);
    }
}
