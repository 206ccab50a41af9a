//! Harness for Spillway's integration tests: real Redis servers and the project's
//! binaries, started per test on loopback and stopped by pid.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process on 127.0.0.1 with its data in a temporary folder.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts Debian's redis-server on a free port with append-only persistence.
    pub fn start() -> anyhow::Result<Self> {
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--dir", &dir.path().display().to_string()])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--save", "", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|error| {
                    anyhow::anyhow!("failed to start redis-server (is it installed?): {error}")
                })?;
            let mut server = Self { child, port, dir };
            if server.wait_ready(Duration::from_secs(10)) {
                return Ok(server);
            }
            server.kill();
        }
        anyhow::bail!("redis-server did not start on a free port after 5 tries")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if redis_ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data folder after `kill`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        anyhow::ensure!(
            self.wait_ready(Duration::from_secs(10)),
            "redis-server did not restart"
        );
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
}

/// Returns a port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Path of a workspace binary built by `cargo build` (debug profile unless
/// `SPILLWAY_BIN_DIR` points elsewhere).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("SPILLWAY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; run `cargo build --bins` first or set SPILLWAY_BIN_DIR",
        path.display()
    );
    path
}

/// The workspace root, the parent of this crate's folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf()
}

/// A small valid embed manifest over `shards` (uri, sha256 hex, records).
pub fn sample_manifest(
    name: &str,
    shards: &[(String, String, u64)],
    records_per_task: u32,
    output: &str,
) -> spillway_common::manifest::Manifest {
    let document = serde_json::json!({
        "version": 1,
        "name": name,
        "kernel": {"name": "embed", "max_seq_len": 128},
        "model": {"uri": "file:///opt/models/minilm/", "sha256": "ab".repeat(32)},
        "inputs": shards.iter().map(|(uri, sha256, records)| serde_json::json!({
            "uri": uri, "sha256": sha256, "records": records
        })).collect::<Vec<_>>(),
        "records_per_task": records_per_task,
        "output": output,
        "worker": {"binary_sha256": "cd".repeat(32)},
        "max_attempts": 2,
    });
    serde_json::from_value(document).expect("sample manifest deserializes")
}
