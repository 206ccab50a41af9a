//! Malformed manifests sent through the intake stream: each is dead-lettered with a
//! readable reason, and the daemon goes on admitting good manifests.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use spillway_common::ledger::Ledger;
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, sample_records, send_raw, serial,
    wait_finished, write_shard,
};

/// Applies `edit` to a copy of a valid manifest and returns the JSON text.
fn edited(base: &serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut manifest = base.clone();
    edit(&mut manifest);
    manifest.to_string().into_bytes()
}

/// Bad messages, each with a text that its dead-letter reason must contain.
fn malformed(base: &serde_json::Value) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("empty body", Vec::new(), "JSON"),
        ("bad JSON", b"{\"version\": 1,".to_vec(), "JSON"),
        ("not an object", b"[1, 2, 3]".to_vec(), "object"),
        ("binary garbage", vec![0xff, 0xfe, 0x00, 0x12], "JSON"),
        (
            "unknown field",
            edited(base, |m| m["colour"] = "blue".into()),
            "colour",
        ),
        (
            "unknown nested field",
            edited(base, |m| m["model"]["revision"] = "main".into()),
            "model.revision",
        ),
        (
            "unknown kernel",
            edited(base, |m| m["kernel"]["name"] = "summarise".into()),
            "kernel",
        ),
        (
            "missing shard sha256",
            edited(base, |m| {
                m["inputs"][0].as_object_mut().unwrap().remove("sha256");
            }),
            "inputs[0].sha256",
        ),
        (
            "malformed sha256",
            edited(base, |m| m["inputs"][0]["sha256"] = "abc123".into()),
            "inputs[0].sha256",
        ),
        (
            "malformed model sha256",
            edited(base, |m| m["model"]["sha256"] = "z".repeat(64).into()),
            "model.sha256",
        ),
        (
            "empty inputs",
            edited(base, |m| m["inputs"] = serde_json::json!([])),
            "inputs",
        ),
        (
            "zero batch size",
            edited(base, |m| m["records_per_task"] = 0.into()),
            "records_per_task",
        ),
        (
            "string batch size",
            edited(base, |m| m["records_per_task"] = "32".into()),
            "records_per_task",
        ),
        (
            "version 2",
            edited(base, |m| m["version"] = 2.into()),
            "version",
        ),
        (
            "unsupported scheme",
            edited(base, |m| {
                m["inputs"][0]["uri"] = "ftp://host/a.jsonl".into()
            }),
            "inputs[0].uri",
        ),
        (
            "image tag only",
            edited(base, |m| {
                m["worker"] = serde_json::json!({"image": "ghcr.io/lab/worker:latest"})
            }),
            "worker",
        ),
        (
            "negative gpus",
            edited(base, |m| m["gpus_per_worker"] = (-1).into()),
            "gpus_per_worker",
        ),
        (
            "missing name",
            edited(base, |m| {
                m.as_object_mut().unwrap().remove("name");
            }),
            "name",
        ),
        (
            "store this build lacks",
            edited(base, |m| m["output"] = "hdfs://namenode/out/".into()),
            "output",
        ),
        (
            "training round larger than the job",
            edited(base, |m| {
                m["kernel"] = serde_json::json!({"name": "contrastive"});
                m["training"] = serde_json::json!({
                    "rounds": 2,
                    "tasks_per_round": 1000,
                    "optimizer": {"name": "sgd", "lr": 0.01},
                    "seed": 1
                });
            }),
            "training.tasks_per_round",
        ),
        (
            "worker digest of another build",
            edited(base, |m| {
                m["worker"]["binary_sha256"] = "ab".repeat(32).into()
            }),
            "worker",
        ),
    ]
}

async fn dead_letters(redis: &RedisServer, count: usize) -> StreamRangeReply {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply: StreamRangeReply = conn.xrange_all("spillway:intake:dead").await.unwrap();
        if reply.ids.len() >= count {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages were dead-lettered",
            reply.ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field_bytes(entry: &redis::streams::StreamId, name: &str) -> Vec<u8> {
    match entry.map.get(name) {
        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
        other => panic!("field {name} missing or not a string: {other:?}"),
    }
}

fn field(entry: &redis::streams::StreamId, name: &str) -> String {
    String::from_utf8_lossy(&field_bytes(entry, name)).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_manifests_are_dead_lettered() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let mut daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(data.path(), "a.jsonl", &sample_records("a", 4))];
    let output = data.path().join("out");
    let base = embed_manifest("dead-letters", inputs, 4, &output);
    let cases = malformed(&base);
    assert!(cases.len() >= 15);

    let mut message_ids = Vec::new();
    for (_, body, _) in &cases {
        message_ids.push(send_raw(&redis, body).await);
    }
    let letters = dead_letters(&redis, cases.len()).await;

    assert_eq!(letters.ids.len(), cases.len());
    for ((name, body, expected), message_id) in cases.iter().zip(&message_ids) {
        let entry = letters
            .ids
            .iter()
            .find(|entry| &field(entry, "message_id") == message_id)
            .unwrap_or_else(|| panic!("case {name:?} was not dead-lettered"));
        let reason = field(entry, "reason");
        assert!(
            reason.contains(expected),
            "case {name:?}: reason does not mention {expected:?}:\n{reason}"
        );
        assert_eq!(
            &field_bytes(entry, "manifest"),
            body,
            "case {name:?}: body changed"
        );
    }
    assert!(daemon.is_running(), "daemon exited:\n{}", daemon.log());

    // The daemon still admits and runs a good manifest.
    let job_id = spillway_common::task::job_id(
        &spillway_common::manifest::parse(base.to_string().as_bytes()).unwrap(),
    );
    send_raw(&redis, base.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, Duration::from_secs(120)).await;
    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pending: redis::streams::StreamPendingReply =
        conn.xpending("spillway:intake", "spillway").await.unwrap();
    assert_eq!(pending.count(), 0, "messages left unacknowledged");

    // Every read command prints JSON with `--output json`.
    let listed = cli_json(&daemon, &["dead-letters", "--limit", "100"], true);
    let listed = listed.as_array().expect("dead-letters prints a list");
    assert_eq!(listed.len(), cases.len());
    for ((name, _, expected), message_id) in cases.iter().zip(&message_ids) {
        let letter = listed
            .iter()
            .find(|letter| letter["message_id"] == message_id.as_str())
            .unwrap_or_else(|| panic!("case {name:?} missing from `dead-letters`"));
        assert!(
            letter["reason"].as_str().unwrap().contains(expected),
            "case {name:?}: {letter}"
        );
    }
    let status = cli_json(&daemon, &["status", &job_id], true);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["succeeded"], 1);
    let jobs = cli_json(&daemon, &["status"], true);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|job| job["job_id"] == job_id.as_str())
    );
    let results = cli_json(&daemon, &["results", &job_id], true);
    assert_eq!(results["state"], "succeeded");
    assert_eq!(results["run_hash"].as_str().unwrap().len(), 64);

    let bad = data.path().join("bad.json");
    std::fs::write(&bad, &cases[5].1).unwrap();
    let report = cli_json(&daemon, &["validate", &bad.display().to_string()], false);
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"][0]["path"], "model.revision");
}

/// Runs `spillway --config … ARGS --output json` and parses its standard output.
fn cli_json(daemon: &Daemon, args: &[&str], expect_success: bool) -> serde_json::Value {
    let output = std::process::Command::new(spillway_tests::binary("spillway"))
        .arg("--config")
        .arg(&daemon.config_path)
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.success(),
        expect_success,
        "spillway {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "spillway {args:?} printed no JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
