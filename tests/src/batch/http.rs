//! Just enough HTTP/1.1 for the Batch stand-in: one request per connection, bodies
//! framed by `Content-Length`, every response sent with `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Maximum size of a header section, in bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// An HTTP request or response: the start line, headers in order, and the body.
#[derive(Debug, Clone)]
pub struct Message {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    /// Returns the request path without the query, for a request.
    pub fn path(&self) -> &str {
        let target = self.start_line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or("")
    }

    /// Returns the status code, for a response.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// Parses the body as JSON, or returns `null`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Returns a copy with another body and a matching `Content-Length`.
    pub fn with_body(&self, body: Vec<u8>) -> Self {
        Self {
            start_line: self.start_line.clone(),
            headers: self.headers.clone(),
            body,
        }
    }

    /// Writes the message with `Content-Length` and `Connection: close`, dropping
    /// any framing headers it had.
    pub fn write_to(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!("{}\r\n", self.start_line);
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "content-length" | "connection" | "transfer-encoding" | "keep-alive"
            ) {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

/// Reads one message from `stream`. Without `Content-Length`, a response's body runs
/// to the end of the stream and a request has none.
pub fn read_message(stream: &TcpStream, is_response: bool) -> std::io::Result<Message> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream);
    let mut start_line = String::new();
    reader.read_line(&mut start_line)?;
    if start_line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a start line",
        ));
    }

    let mut headers = Vec::new();
    let mut header_bytes = 0;
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line)?;
        header_bytes += read;
        if read == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if header_bytes > MAX_HEADER_BYTES {
            return Err(std::io::Error::other("header section too long"));
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        None if is_response => {
            reader.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(Message {
        start_line: start_line.trim_end().to_string(),
        headers,
        body,
    })
}

/// Sends `request` to 127.0.0.1:`port` and returns the response.
pub fn exchange(port: u16, request: &Message) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    request.write_to(&mut stream)?;
    read_message(&stream, true)
}

/// Builds a JSON response.
pub fn json_response(status: u16, reason: &str, body: &serde_json::Value) -> Message {
    Message {
        start_line: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

/// Builds an AWS JSON error response with the error type in header and body, as
/// Batch sends it.
pub fn error_response(status: u16, reason: &str, error_type: &str, message: &str) -> Message {
    let mut response = json_response(
        status,
        reason,
        &serde_json::json!({"__type": error_type, "message": message}),
    );
    response
        .headers
        .push(("x-amzn-ErrorType".into(), error_type.into()));
    response
}
