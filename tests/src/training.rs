//! Training jobs for end-to-end tests: pair shards, manifests for the real model and
//! the built worker, and a way to kill a job's workers in the middle of a task.

use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use spillway_common::ledger::{JobRecord, Ledger};

use crate::{RedisServer, embed_manifest};

/// Package-like summaries that pairs are made from; each pair's positive describes
/// its anchor in other words.
const SUBJECTS: [(&str, &str); 8] = [
    (
        "JSON parser library",
        "reads and writes JSON documents from C programs",
    ),
    (
        "archive compression tools",
        "packs files into archives and compresses them",
    ),
    (
        "web server",
        "serves static files and forwards requests to applications",
    ),
    ("math fonts", "glyphs for typesetting mathematical formulas"),
    (
        "GPU compute bindings",
        "lets programs run kernels on graphics cards",
    ),
    (
        "clock synchronisation daemon",
        "keeps the system time in step with servers",
    ),
    (
        "C library manual",
        "reference pages for the functions of the C library",
    ),
    (
        "railway building game",
        "a strategy game about laying track between towns",
    ),
];

/// Writes a JSONL shard of `count` `{"id", "anchor", "positive"}` pairs and returns
/// its manifest entry.
pub fn write_pair_shard(dir: &Path, name: &str, count: usize) -> serde_json::Value {
    let mut body = String::new();
    for i in 0..count {
        let (anchor, positive) = SUBJECTS[i % SUBJECTS.len()];
        let line = serde_json::json!({
            "id": format!("{name}-{i:04}"),
            "anchor": format!("{anchor} {i}"),
            "positive": format!("This package {positive} (release {i})."),
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    std::fs::create_dir_all(dir).expect("create shard folder");
    let path = dir.join(name);
    std::fs::write(&path, &body).expect("write shard");
    serde_json::json!({
        "uri": format!("file://{}", path.display()),
        "sha256": spillway_common::digest::Sha256Hex::of(body.as_bytes()).to_string(),
        "records": count,
    })
}

/// Builds a training manifest for the real model and the built worker: `kernel` is the
/// kernel object and `training` the training section.
pub fn training_manifest(
    name: &str,
    kernel: serde_json::Value,
    training: serde_json::Value,
    inputs: Vec<serde_json::Value>,
    records_per_task: u32,
    output: &Path,
) -> serde_json::Value {
    let mut manifest = embed_manifest(name, inputs, records_per_task, output);
    manifest["kernel"] = kernel;
    manifest["training"] = training;
    manifest
}

/// Polls the ledger until `ready` holds for the job, or panics after `timeout`.
pub async fn wait_job(
    ledger: &Ledger,
    job_id: &str,
    timeout: Duration,
    event: &str,
    ready: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(job) = ledger.job(job_id).await.expect("read job")
            && ready(&job)
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id}: {event} did not happen within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs every worker registered for the job and returns how many were killed.
/// Worker ids end in the process id: `local-<array>-<index>-<host>-<pid>`.
pub async fn kill_workers(redis: &RedisServer, ledger: &Ledger, job_id: &str) -> usize {
    let client = redis::Client::open(redis.url()).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let workers: Vec<String> = conn
        .zrange(ledger.keys().workers(job_id), 0, -1)
        .await
        .expect("read workers");
    let mut killed = 0;
    for worker_id in workers {
        let pid = worker_id.rsplit('-').next().expect("worker id has a pid");
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("run kill");
        if status.success() {
            killed += 1;
        }
    }
    killed
}
