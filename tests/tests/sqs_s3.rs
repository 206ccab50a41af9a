//! The SQS intake and S3 shards and results, against a moto server with real Redis,
//! daemon and worker processes. Requires `cargo build --bins`, and the model and moto
//! that scripts/install-deps.sh installs. Every AWS client here is pinned to moto on
//! 127.0.0.1 with dummy credentials, and daemons get `AWS_EC2_METADATA_DISABLED=true`
//! and no profile files (see `spillway_tests::AWS_SAFETY_ENV`).

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, SendMessageBatchRequestEntry};
use bytes::Bytes;
use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::Ledger;
use spillway_common::store::{self, PutOutcome, StoreError};
use spillway_tests::moto::{MotoServer, create_queue, queue_depth};
use spillway_tests::objects;
use spillway_tests::proxy::FreezableProxy;
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, binary, embed_manifest, job_id_of, sample_records, serial,
    wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const BUCKET: &str = "spillway-data";
const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";

/// One `[[intake.sqs]]` table.
struct QueueTable<'a> {
    url: &'a str,
    region: &'a str,
    endpoint: String,
    dead_letter_url: &'a str,
    visibility_timeout_secs: u64,
    max_deliveries: u64,
    /// Access key id and secret files; without them the standard chain applies.
    credential_files: Option<(&'a Path, &'a Path)>,
}

impl QueueTable<'_> {
    fn toml(&self) -> String {
        let mut table = format!(
            "[[intake.sqs]]\nqueue_url = \"{}\"\nregion = \"{}\"\nendpoint_url = \"{}\"\n\
             dead_letter_queue_url = \"{}\"\nvisibility_timeout_secs = {}\nmax_deliveries = {}\n",
            self.url,
            self.region,
            self.endpoint,
            self.dead_letter_url,
            self.visibility_timeout_secs,
            self.max_deliveries,
        );
        if let Some((key, secret)) = self.credential_files {
            table.push_str(&format!(
                "access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
                key.display(),
                secret.display()
            ));
        }
        table.push('\n');
        table
    }
}

/// Builds a queue table with the defaults of these tests: moto as endpoint, a 30 s
/// visibility timeout, five deliveries, credentials from the daemon's environment.
fn queue_table<'a>(
    moto: &MotoServer,
    url: &'a str,
    region: &'a str,
    dead_letter_url: &'a str,
) -> QueueTable<'a> {
    QueueTable {
        url,
        region,
        endpoint: moto.endpoint(),
        dead_letter_url,
        visibility_timeout_secs: 30,
        max_deliveries: 5,
        credential_files: None,
    }
}

/// Builds the options of a daemon that reads `tables` and has moto's S3 settings in its
/// environment, which its workers inherit.
fn daemon_options(moto: &MotoServer, tables: &[&QueueTable]) -> DaemonOptions {
    DaemonOptions {
        extra_config: tables.iter().map(|table| table.toml()).collect(),
        env: moto.s3_env(),
        ..DaemonOptions::default()
    }
}

/// Uploads the bytes of a local shard to `s3://BUCKET/key` and returns its manifest
/// entry with the same SHA-256 and record count.
async fn upload_shard(
    moto: &MotoServer,
    file_entry: &serde_json::Value,
    key: &str,
) -> serde_json::Value {
    let uri = format!("s3://{BUCKET}/{key}");
    objects::upload_shard(file_entry, &uri, &moto.s3_env()).await
}

async fn send(client: &Client, queue_url: &str, body: &str) {
    client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("send to {queue_url}: {error:?}"));
}

/// Receives `count` messages from a queue with all their attributes, waiting up to 30 s.
async fn receive(client: &Client, queue_url: &str, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "{queue_url} had {} of {count} messages after 30 s",
            messages.len()
        );
        let output = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap_or_else(|error| panic!("receive from {queue_url}: {error:?}"));
        messages.extend(output.messages.unwrap_or_default());
    }
    messages
}

fn attribute<'a>(message: &'a Message, name: &str) -> &'a str {
    message
        .message_attributes()
        .and_then(|attributes| attributes.get(name))
        .and_then(|value| value.string_value())
        .unwrap_or_else(|| panic!("attribute {name} missing from {message:?}"))
}

/// Waits until the queue has no message waiting or in flight.
async fn wait_drained(client: &Client, queue_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = queue_depth(client, queue_url).await;
        if depth == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue_url} still has {depth} messages after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sums the `messages=N` fields of the "messages received" lines of a daemon log.
fn messages_received(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("messages received"))
        .filter_map(|line| {
            let field = line
                .split_whitespace()
                .find(|word| word.starts_with("messages="))?;
            field.trim_start_matches("messages=").parse().ok()
        })
        .collect()
}

async fn redis_command(redis: &RedisServer, args: &[&str]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let _: redis::Value = command.query_async(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_embed_job_matches_file_run() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    moto.create_bucket(BUCKET).unwrap();
    let east = moto.sqs_client(EAST);
    let west = moto.sqs_client(WEST);
    let east_url = create_queue(&east, "manifests-east", &[]).await;
    let east_dead = create_queue(&east, "manifests-east-dead", &[]).await;
    let west_url = create_queue(&west, "manifests-west", &[]).await;
    let west_dead = create_queue(&west, "manifests-west-dead", &[]).await;

    // The east queue reads credentials from files, the west one from the
    // environment through the SDK's standard chain.
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("access-key-id");
    let secret_file = secrets.path().join("secret-access-key");
    std::fs::write(&key_file, "testing\n").unwrap();
    std::fs::write(&secret_file, "testing\n").unwrap();
    let east_table = QueueTable {
        credential_files: Some((&key_file, &secret_file)),
        ..queue_table(&moto, &east_url, EAST, &east_dead)
    };
    let west_table = queue_table(&moto, &west_url, WEST, &west_dead);
    let daemon = Daemon::start(&redis, daemon_options(&moto, &[&east_table, &west_table])).unwrap();

    let data = tempfile::tempdir().unwrap();
    let file_inputs = vec![
        write_shard(data.path(), "a.jsonl", &sample_records("a", 13)),
        write_shard(data.path(), "b.jsonl", &sample_records("b", 9)),
    ];
    let s3_inputs = vec![
        upload_shard(&moto, &file_inputs[0], "shards/a.jsonl").await,
        upload_shard(&moto, &file_inputs[1], "shards/b.jsonl").await,
    ];
    let output = data.path().join("out");
    let file_manifest = embed_manifest("sqs-file", file_inputs, 4, &output);
    let mut s3_manifest = embed_manifest("sqs-s3", s3_inputs, 4, &output);
    s3_manifest["output"] = serde_json::json!(format!("s3://{BUCKET}/out/"));
    let file_job = job_id_of(&file_manifest);
    let s3_job = job_id_of(&s3_manifest);

    send(&east, &east_url, &file_manifest.to_string()).await;
    let manifest_path = data.path().join("s3-manifest.json");
    std::fs::write(&manifest_path, s3_manifest.to_string()).unwrap();
    let submitted = std::process::Command::new(binary("spillway"))
        .args(["--config", &daemon.config_path.display().to_string()])
        .args([
            "submit",
            "--sqs",
            &west_url,
            &manifest_path.display().to_string(),
        ])
        .env_clear()
        .envs(moto.s3_env())
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "spillway submit --sqs failed: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&submitted.stdout).trim(), s3_job);

    // check-config as a whole fails while the daemon holds the metrics port, so only
    // its SQS lines are checked.
    let checked = std::process::Command::new(binary("spillway"))
        .args(["--config", &daemon.config_path.display().to_string()])
        .arg("check-config")
        .env_clear()
        .envs(moto.s3_env())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    for index in 0..2 {
        let line = format!("ok      intake.sqs[{index}]: ");
        assert!(report.contains(&line), "missing {line:?} in:\n{report}");
    }

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let file_record = wait_finished(&ledger, &file_job, JOB_TIMEOUT).await;
    let s3_record = wait_finished(&ledger, &s3_job, JOB_TIMEOUT).await;

    let expected_uri = format!("s3://{BUCKET}/out/{s3_job}/embeddings.safetensors");
    assert_eq!(
        s3_record.artefact_uri.as_deref(),
        Some(expected_uri.as_str())
    );
    let s3_block =
        objects::assert_embed_parity(&file_record, &s3_record, &moto.s3_env(), &daemon.log()).await;
    assert_eq!(s3_record.tasks_total, 7);
    assert_eq!(s3_block.ids.len(), 22);
    let job_envelope = format!("s3://{BUCKET}/out/{s3_job}/job.json");
    assert!(
        store::locate_with(&job_envelope, moto.s3_env())
            .unwrap()
            .exists()
            .await
            .unwrap()
    );

    wait_drained(&east, &east_url).await;
    wait_drained(&west, &west_url).await;
    let metrics = daemon.scrape();
    for queue in [&east_url, &west_url] {
        let admitted =
            format!("spillway_intake_messages_total{{queue=\"{queue}\",outcome=\"admitted\"}} 1");
        assert!(
            metrics.contains(&admitted),
            "missing {admitted:?} in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_admission_is_not_redelivered() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    let client = moto.sqs_client(EAST);
    let queue_url = create_queue(&client, "manifests", &[]).await;
    let dead_url = create_queue(&client, "manifests-dead", &[]).await;
    let table = QueueTable {
        visibility_timeout_secs: 2,
        ..queue_table(&moto, &queue_url, EAST, &dead_url)
    };
    let first = Daemon::start(&redis, daemon_options(&moto, &[&table])).unwrap();
    let second = Daemon::start(&redis, daemon_options(&moto, &[&table])).unwrap();
    for daemon in [&first, &second] {
        assert!(
            daemon.wait_log("daemon started", Duration::from_secs(30)),
            "daemon did not start its intake:\n{}",
            daemon.log()
        );
    }

    let data = tempfile::tempdir().unwrap();
    let output = data.path().join("out");
    let manifests: Vec<serde_json::Value> = (0..3)
        .map(|index| {
            let name = format!("slow-{index}");
            let shard = write_shard(
                data.path(),
                &format!("{name}.jsonl"),
                &sample_records(&name, 2),
            );
            embed_manifest(&name, vec![shard], 2, &output)
        })
        .collect();
    let job_ids: Vec<String> = manifests.iter().map(job_id_of).collect();

    // Writes to the ledger stall for 5 s, as in a failover, so the first admission
    // takes 2.5 visibility timeouts and the later messages of a batch wait longer.
    redis_command(&redis, &["CLIENT", "PAUSE", "5000", "WRITE"]).await;
    let sent = Instant::now();
    let entries = manifests
        .iter()
        .enumerate()
        .map(|(index, manifest)| {
            SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(manifest.to_string())
                .build()
                .unwrap()
        })
        .collect();
    client
        .send_message_batch()
        .queue_url(&queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    while ledger.job(&job_ids[0]).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admission = sent.elapsed();
    for job_id in &job_ids {
        let job = wait_finished(&ledger, job_id, JOB_TIMEOUT).await;
        assert_eq!(
            job.state,
            "succeeded",
            "daemon logs:\n{}\n{}",
            first.log(),
            second.log()
        );
    }

    let logs = format!("{}\n{}", first.log(), second.log());
    assert!(
        admission >= Duration::from_secs(4),
        "admission took only {admission:?}"
    );
    assert_eq!(logs.matches("job admitted").count(), 3, "{logs}");
    assert_eq!(
        logs.matches("redelivered message matches").count(),
        0,
        "{logs}"
    );
    let receives = messages_received(&logs);
    assert_eq!(
        receives.iter().sum::<u64>(),
        3,
        "each message must be received once: {receives:?}"
    );
    assert!(
        receives.iter().any(|&count| count >= 2),
        "no receive returned a batch, so no message waited behind another: {receives:?}"
    );
    wait_drained(&client, &queue_url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_killed_before_delete_makes_one_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    let proxy = FreezableProxy::start(moto.port).unwrap();
    let client = moto.sqs_client(EAST);
    let queue_url = create_queue(&client, "manifests", &[]).await;
    let dead_url = create_queue(&client, "manifests-dead", &[]).await;

    // The first daemon reaches SQS only through the proxy, so freezing the proxy
    // stops its DeleteMessage while the ledger stays reachable.
    let through_proxy = QueueTable {
        endpoint: proxy.endpoint(),
        visibility_timeout_secs: 3,
        ..queue_table(&moto, &queue_url, EAST, &dead_url)
    };
    let direct = QueueTable {
        visibility_timeout_secs: 3,
        ..queue_table(&moto, &queue_url, EAST, &dead_url)
    };
    let mut first = Daemon::start(&redis, daemon_options(&moto, &[&through_proxy])).unwrap();
    assert!(
        first.wait_log("daemon started", Duration::from_secs(30)),
        "{}",
        first.log()
    );

    let data = tempfile::tempdir().unwrap();
    let shard = write_shard(data.path(), "a.jsonl", &sample_records("a", 8));
    let output = data.path().join("out");
    let manifest = embed_manifest("killed-before-delete", vec![shard], 4, &output);
    let job_id = job_id_of(&manifest);

    redis_command(&redis, &["CLIENT", "PAUSE", "4000", "WRITE"]).await;
    send(&client, &queue_url, &manifest.to_string()).await;
    assert!(
        first.wait_log("messages received", Duration::from_secs(30)),
        "{}",
        first.log()
    );
    proxy.freeze();

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger
        .job(&job_id)
        .await
        .unwrap()
        .is_none_or(|job| job.state == "admitting")
    {
        assert!(
            Instant::now() < deadline,
            "job never became durable:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for the daemon to reach the delete, which the frozen proxy holds back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.kill();
    assert_eq!(
        queue_depth(&client, &queue_url).await,
        1,
        "the message was deleted before the kill"
    );

    let second = Daemon::start(&redis, daemon_options(&moto, &[&direct])).unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", second.log());
    // The first daemon logs an admission only after the delete, which never happened.
    assert!(!first.log().contains("job admitted"), "{}", first.log());
    assert!(
        second.wait_log(
            "redelivered message matches an existing job",
            Duration::from_secs(30)
        ),
        "{}",
        second.log()
    );
    assert!(!second.log().contains("job admitted"), "{}", second.log());
    let all_jobs = [
        ledger.active_jobs().await.unwrap(),
        ledger.finished_jobs(100).await.unwrap(),
    ]
    .concat();
    assert_eq!(all_jobs, vec![job_id.clone()]);
    let results = std::fs::read_dir(output.join(&job_id).join("results"))
        .unwrap()
        .count();
    assert_eq!(results, 2);
    wait_drained(&client, &queue_url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_go_to_dead_letter_queues() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    let client = moto.sqs_client(EAST);
    let standard_url = create_queue(&client, "manifests", &[]).await;
    let standard_dead = create_queue(&client, "manifests-dead", &[]).await;
    let fifo = [("FifoQueue", "true")];
    let fifo_url = create_queue(&client, "manifests.fifo", &fifo).await;
    let fifo_dead = create_queue(&client, "manifests-dead.fifo", &fifo).await;

    let data = tempfile::tempdir().unwrap();
    let output = data.path().join("out");
    let shard = write_shard(data.path(), "a.jsonl", &sample_records("a", 2));
    let valid = embed_manifest("fifo-valid", vec![shard.clone()], 2, &output);
    let overdelivered = embed_manifest("overdelivered", vec![shard], 1, &output);
    let missing_fields = r#"{"version": 1}"#;

    // Messages are in place before the daemon starts. One valid manifest was
    // received twice already, so the daemon's receive is its third delivery.
    send(&client, &standard_url, &overdelivered.to_string()).await;
    for _ in 0..2 {
        let received = client
            .receive_message()
            .queue_url(&standard_url)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        assert_eq!(received.messages().len(), 1);
    }
    send(&client, &standard_url, "{not json").await;
    for (body, deduplication_id) in [
        (missing_fields, "invalid"),
        (&valid.to_string()[..], "valid"),
    ] {
        client
            .send_message()
            .queue_url(&fifo_url)
            .message_body(body)
            .message_group_id("scientist-1")
            .message_deduplication_id(deduplication_id)
            .send()
            .await
            .unwrap();
    }

    let standard_table = QueueTable {
        max_deliveries: 2,
        ..queue_table(&moto, &standard_url, EAST, &standard_dead)
    };
    let fifo_table = queue_table(&moto, &fifo_url, EAST, &fifo_dead);
    let daemon = Daemon::start(
        &redis,
        daemon_options(&moto, &[&standard_table, &fifo_table]),
    )
    .unwrap();

    let mut dead = receive(&client, &standard_dead, 2).await;
    dead.sort_by_key(|message| message.body().unwrap_or_default().len());
    let malformed = &dead[0];
    assert_eq!(malformed.body(), Some("{not json"));
    assert!(
        attribute(malformed, "reason").contains("invalid JSON"),
        "{malformed:?}"
    );
    let errors: serde_json::Value = serde_json::from_str(attribute(malformed, "errors")).unwrap();
    assert_eq!(errors.as_array().map(Vec::len), Some(1), "{errors}");
    assert_eq!(attribute(malformed, "source_queue_url"), standard_url);
    assert_eq!(attribute(malformed, "delivery_count"), "1");
    let overdelivered_dead = &dead[1];
    assert_eq!(
        overdelivered_dead.body(),
        Some(&overdelivered.to_string()[..])
    );
    assert!(
        attribute(overdelivered_dead, "reason").contains("delivered 3 times"),
        "{overdelivered_dead:?}"
    );

    let fifo_dead_messages = receive(&client, &fifo_dead, 1).await;
    let invalid = &fifo_dead_messages[0];
    assert_eq!(invalid.body(), Some(missing_fields));
    assert!(
        attribute(invalid, "reason").contains("missing required field `kernel`"),
        "{invalid:?}"
    );
    let group = invalid
        .attributes()
        .and_then(|attributes| attributes.get(&MessageSystemAttributeName::MessageGroupId));
    assert_eq!(group.map(String::as_str), Some("scientist-1"));

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id_of(&valid), JOB_TIMEOUT).await;
    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    let all_jobs = [
        ledger.active_jobs().await.unwrap(),
        ledger.finished_jobs(100).await.unwrap(),
    ]
    .concat();
    assert_eq!(all_jobs, vec![job_id_of(&valid)]);
    wait_drained(&client, &standard_url).await;
    wait_drained(&client, &fifo_url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_create_only_write_keeps_first_value() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket(BUCKET).unwrap();
    let uri = format!("s3://{BUCKET}/out/job/results/task-0.safetensors");

    // Two stores stand for two workers writing the same result.
    let first_writer = store::locate_with(&uri, moto.s3_env()).unwrap();
    let second_writer = store::locate_with(&uri, moto.s3_env()).unwrap();
    let first = first_writer
        .put_create(Bytes::from_static(b"first"))
        .await
        .unwrap();
    let second = second_writer
        .put_create(Bytes::from_static(b"second"))
        .await
        .unwrap();

    assert_eq!(first, PutOutcome::Created);
    assert_eq!(second, PutOutcome::AlreadyExisted);
    let stored = objects::get_object(&uri, &moto.s3_env()).await;
    assert_eq!(stored, Bytes::from_static(b"first"));
    let verified = second_writer
        .get_verified(&Sha256Hex::of(b"first"))
        .await
        .unwrap();
    assert_eq!(verified, Bytes::from_static(b"first"));
    let mismatch = second_writer
        .get_verified(&Sha256Hex::of(b"second"))
        .await
        .unwrap_err();
    assert!(
        matches!(mismatch, StoreError::DigestMismatch { .. }),
        "{mismatch:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_shard_with_wrong_sha_fails_task() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    moto.create_bucket(BUCKET).unwrap();
    let client = moto.sqs_client(EAST);
    let queue_url = create_queue(&client, "manifests", &[]).await;
    let dead_url = create_queue(&client, "manifests-dead", &[]).await;
    let table = queue_table(&moto, &queue_url, EAST, &dead_url);
    let daemon = Daemon::start(&redis, daemon_options(&moto, &[&table])).unwrap();

    let data = tempfile::tempdir().unwrap();
    let good = write_shard(data.path(), "good.jsonl", &sample_records("g", 4));
    let bad = write_shard(data.path(), "bad.jsonl", &sample_records("b", 4));
    let good = upload_shard(&moto, &good, "shards/good.jsonl").await;
    let mut bad = upload_shard(&moto, &bad, "shards/bad.jsonl").await;
    bad["sha256"] = serde_json::json!("0".repeat(64));
    let mut manifest = embed_manifest("s3-mismatch", vec![good, bad], 4, &data.path().join("out"));
    manifest["output"] = serde_json::json!(format!("s3://{BUCKET}/out/"));
    let job_id = job_id_of(&manifest);

    send(&client, &queue_url, &manifest.to_string()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "failed", "daemon log:\n{}", daemon.log());
    assert_eq!(job.failed, 1);
    assert_eq!(job.succeeded, 1);
    assert_eq!(job.retries, 0);
    let tasks = ledger.tasks(&job_id, 2).await.unwrap();
    assert_eq!(tasks[1].state, "failed");
    let reason = tasks[1].reason.clone().unwrap_or_default();
    assert!(reason.contains("SHA-256 mismatch"), "{reason}");
    assert!(
        reason.contains(&format!("s3://{BUCKET}/shards/bad.jsonl")),
        "{reason}"
    );
}
