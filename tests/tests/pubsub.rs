//! The Pub/Sub intake against Google's Pub/Sub emulator, with real Redis, daemon and
//! worker processes, and GCS on fake-gcs-server where a test names `gs://` URIs.
//! Requires `cargo build --bins`, the model and fake-gcs-server that
//! scripts/install-deps.sh installs and the emulator jar (see
//! `spillway_tests::pubsub`). Every Pub/Sub client, the daemons' included, has the
//! emulator's endpoint and anonymous credentials, and every GCS client reaches
//! fake-gcs-server through `STORAGE_EMULATOR_HOST` without credentials.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spillway_common::ledger::{JobRecord, Ledger};
use spillway_common::store;
use spillway_tests::gcs::FakeGcsServer;
use spillway_tests::objects::{assert_embed_parity, upload_model, upload_shard};
use spillway_tests::pubsub::{PROJECT, PubsubEmulator, topic_name};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, binary, embed_manifest, job_id_of, model_digest, model_dir,
    sample_records, serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const TOPIC: &str = "manifests";
const SUBSCRIPTION: &str = "manifests-spillway";
const DEAD_TOPIC: &str = "manifests-dead";
const DEAD_SUBSCRIPTION: &str = "manifests-dead-reader";
const BUCKET: &str = "spillway-data";

/// One `[[intake.pubsub]]` table.
struct SubscriptionTable {
    endpoint: String,
    min_lease_secs: u64,
    max_outstanding_messages: u32,
}

impl SubscriptionTable {
    fn new(emulator: &PubsubEmulator) -> Self {
        Self {
            endpoint: emulator.endpoint(),
            min_lease_secs: 10,
            max_outstanding_messages: 10,
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[intake.pubsub]]\nproject = \"{PROJECT}\"\nsubscription = \"{SUBSCRIPTION}\"\n\
             topic = \"{TOPIC}\"\ndead_letter_topic = \"{DEAD_TOPIC}\"\nendpoint = \"{}\"\n\
             credentials = \"anonymous\"\nmin_lease_secs = {}\nmax_lease_secs = 600\n\
             max_outstanding_messages = {}\n",
            self.endpoint, self.min_lease_secs, self.max_outstanding_messages
        )
    }
}

/// Options of a daemon that reads the table; the Redis stream stays enabled.
fn daemon_options(table: &SubscriptionTable) -> DaemonOptions {
    DaemonOptions {
        extra_config: table.toml(),
        ..DaemonOptions::default()
    }
}

/// Creates the manifest topic, its subscription with a dead-letter policy after five
/// attempts and `ack_deadline_secs`, and the dead-letter topic with a reader.
async fn create_topics(emulator: &PubsubEmulator, ack_deadline_secs: i32) {
    for topic in [TOPIC, DEAD_TOPIC] {
        emulator.create_topic(topic).await.unwrap();
    }
    emulator
        .create_subscription(
            SUBSCRIPTION,
            TOPIC,
            ack_deadline_secs,
            Some((DEAD_TOPIC, 5)),
        )
        .await
        .unwrap();
    emulator
        .create_subscription(DEAD_SUBSCRIPTION, DEAD_TOPIC, 10, None)
        .await
        .unwrap();
}

/// Writes `manifest` into `dir`, sends it with `spillway submit --pubsub TOPIC` and the
/// daemon's configuration, and returns the job id that the command prints.
fn submit(daemon: &Daemon, manifest: &serde_json::Value, dir: &Path) -> String {
    let manifest_path = dir.join(format!("{}.json", manifest["name"].as_str().unwrap()));
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let submitted = std::process::Command::new(binary("spillway"))
        .args(["--config", &daemon.config_path.display().to_string()])
        .args([
            "submit",
            "--pubsub",
            TOPIC,
            &manifest_path.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "spillway submit --pubsub failed: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string()
}

/// Asserts that the daemon's metrics count `count` messages of the subscription with
/// the intake outcome `outcome`.
fn assert_intake_count(daemon: &Daemon, outcome: &str, count: u64) {
    let subscription = format!("projects/{PROJECT}/subscriptions/{SUBSCRIPTION}");
    let line = format!(
        "spillway_intake_messages_total{{queue=\"{subscription}\",outcome=\"{outcome}\"}} {count}"
    );
    let metrics = daemon.scrape();
    assert!(metrics.contains(&line), "missing {line:?} in:\n{metrics}");
}

/// Sums the `messages=N` fields of the "messages received" lines of daemon logs.
fn messages_received(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("messages received"))
        .filter_map(|line| {
            let field = line
                .split_whitespace()
                .find(|word| word.starts_with("messages="))?;
            field.trim_start_matches("messages=").parse::<u64>().ok()
        })
        .sum()
}

/// Waits for a job to finish, and fails with the daemons' logs when it does not.
async fn wait_job(ledger: &Ledger, job_id: &str, daemons: &[&Daemon]) -> JobRecord {
    let finished =
        tokio::time::timeout(JOB_TIMEOUT, wait_finished(ledger, job_id, JOB_TIMEOUT * 2));
    match finished.await {
        Ok(job) => job,
        Err(_) => {
            let logs: Vec<String> = daemons.iter().map(|daemon| daemon.log()).collect();
            let job = ledger.job(job_id).await.unwrap();
            panic!(
                "job {job_id} did not finish within {JOB_TIMEOUT:?}: {job:?}\ndaemon logs:\n{}",
                logs.join("\n----\n")
            );
        }
    }
}

fn wait_log(daemon: &Daemon, text: &str) {
    assert!(
        daemon.wait_log(text, Duration::from_secs(60)),
        "no {text:?} in the daemon log:\n{}",
        daemon.log()
    );
}

async fn all_jobs(ledger: &Ledger) -> Vec<String> {
    let mut jobs = [
        ledger.active_jobs().await.unwrap(),
        ledger.finished_jobs(100).await.unwrap(),
    ]
    .concat();
    jobs.sort();
    jobs
}

#[tokio::test(flavor = "multi_thread")]
async fn pubsub_manifest_becomes_one_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    create_topics(&emulator, 10).await;
    let daemon = Daemon::start(&redis, daemon_options(&SubscriptionTable::new(&emulator))).unwrap();
    wait_log(&daemon, "daemon started");

    let data = tempfile::tempdir().unwrap();
    let file_inputs = vec![
        write_shard(data.path(), "a.jsonl", &sample_records("a", 5)),
        write_shard(data.path(), "b.jsonl", &sample_records("b", 3)),
    ];
    let output = data.path().join("out");
    let manifest = embed_manifest("pubsub-embed", file_inputs.clone(), 4, &output);
    let job_id = job_id_of(&manifest);

    assert_eq!(submit(&daemon, &manifest, data.path()), job_id);

    // check-config as a whole fails while the daemon holds the metrics port, so only
    // its Pub/Sub line is checked.
    let checked = std::process::Command::new(binary("spillway"))
        .args(["--config", &daemon.config_path.display().to_string()])
        .arg("check-config")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    let line = report
        .lines()
        .find(|line| line.contains("intake.pubsub[0]"))
        .unwrap_or_else(|| panic!("no intake.pubsub[0] line in:\n{report}"));
    assert!(line.starts_with("ok      "), "{line}");
    assert!(line.contains(&topic_name(DEAD_TOPIC)), "{line}");
    assert!(line.contains("after 5 delivery attempts"), "{line}");

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_job(&ledger, &job_id, &[&daemon]).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert_eq!(job.tasks_total, 3);
    assert_eq!(all_jobs(&ledger).await, vec![job_id.clone()]);
    let artefact = output.join(&job_id).join("embeddings.safetensors");
    let block =
        spillway_common::artefact::EmbeddingBlock::decode(&std::fs::read(artefact).unwrap())
            .unwrap();
    assert_eq!(block.ids.len(), 8);
    let log = daemon.log();
    assert_eq!(log.matches("job admitted").count(), 1, "{log}");
    assert_intake_count(&daemon, "admitted", 1);
}

/// Submits the same embed job twice through Pub/Sub: once with shards, model and
/// output on local files, once with all three in GCS.
#[tokio::test(flavor = "multi_thread")]
async fn pubsub_gcs_embed_job_matches_file_run() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    create_topics(&emulator, 10).await;
    let gcs = FakeGcsServer::start().unwrap();
    gcs.create_bucket(BUCKET).unwrap();
    let model_uri = format!("gs://{BUCKET}/models/all-MiniLM-L6-v2/");
    upload_model(&model_dir(), &model_uri, &gcs.env()).await;
    // The daemon's environment, which its workers inherit, points GCS at the fake
    // server.
    let options = DaemonOptions {
        env: gcs.env(),
        ..daemon_options(&SubscriptionTable::new(&emulator))
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    wait_log(&daemon, "daemon started");

    let data = tempfile::tempdir().unwrap();
    let file_inputs = vec![
        write_shard(data.path(), "a.jsonl", &sample_records("a", 13)),
        write_shard(data.path(), "b.jsonl", &sample_records("b", 9)),
    ];
    let mut gcs_inputs = Vec::new();
    for (entry, key) in file_inputs.iter().zip(["a.jsonl", "b.jsonl"]) {
        let uri = format!("gs://{BUCKET}/shards/{key}");
        gcs_inputs.push(upload_shard(entry, &uri, &gcs.env()).await);
    }
    let output = data.path().join("out");
    let file_manifest = embed_manifest("pubsub-gcs-parity", file_inputs, 4, &output);
    let mut gcs_manifest = embed_manifest("pubsub-gcs-parity", gcs_inputs, 4, &output);
    gcs_manifest["model"]["uri"] = serde_json::json!(model_uri);
    gcs_manifest["output"] = serde_json::json!(format!("gs://{BUCKET}/out/"));
    let file_job = job_id_of(&file_manifest);
    let gcs_job = job_id_of(&gcs_manifest);

    emulator
        .publish(TOPIC, file_manifest.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(submit(&daemon, &gcs_manifest, data.path()), gcs_job);

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let file_record = wait_job(&ledger, &file_job, &[&daemon]).await;
    let gcs_record = wait_job(&ledger, &gcs_job, &[&daemon]).await;

    // The artefacts' headers name different job ids, so the decoded ids and rows are
    // compared, bit for bit, rather than the bytes.
    let logs = format!(
        "daemon log:\n{}\nfake-gcs-server log:\n{}",
        daemon.log(),
        gcs.log()
    );
    let gcs_block = assert_embed_parity(&file_record, &gcs_record, &gcs.env(), &logs).await;
    assert_eq!(gcs_block.ids.len(), 22);
    assert_eq!(gcs_record.tasks_total, 7);
    let expected_uri = format!("gs://{BUCKET}/out/{gcs_job}/embeddings.safetensors");
    assert_eq!(
        gcs_record.artefact_uri.as_deref(),
        Some(expected_uri.as_str())
    );
    let job_envelope = format!("gs://{BUCKET}/out/{gcs_job}/job.json");
    let envelope_exists = store::locate_with(&job_envelope, gcs.env())
        .unwrap()
        .exists()
        .await
        .unwrap();
    assert!(envelope_exists, "{job_envelope} is missing");
    // Workers copy a model that is not on a file:// URI into their cache under its
    // digest, so this folder shows that the GCS job's model came from GCS.
    let cached_model = daemon
        .dir
        .path()
        .join("cache/models")
        .join(model_digest(&model_dir()));
    assert!(
        cached_model.join("model.safetensors").is_file(),
        "no model in {}",
        cached_model.display()
    );

    let mut expected_jobs = vec![file_job, gcs_job];
    expected_jobs.sort();
    assert_eq!(all_jobs(&ledger).await, expected_jobs);
    assert_intake_count(&daemon, "admitted", 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_held_past_ack_deadline_is_not_redelivered() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    // Pub/Sub's shortest ack deadline, and the shortest lease extension.
    create_topics(&emulator, 10).await;
    let table = SubscriptionTable::new(&emulator);

    // The first daemon reaches Redis through a proxy that can delay every command,
    // so that one admission outlasts the ack deadline without any single command
    // reaching the ledger's response timeout.
    let proxy = LatencyProxy::start(redis.port).unwrap();
    let slow_url = format!("redis://127.0.0.1:{}/0", proxy.port);
    let slow = Daemon::start_with_url(&slow_url, daemon_options(&table)).unwrap();
    wait_log(&slow, "daemon started");

    let data = tempfile::tempdir().unwrap();
    let shard = write_shard(data.path(), "a.jsonl", &sample_records("a", 2));
    let manifest = embed_manifest(
        "held-past-deadline",
        vec![shard],
        2,
        &data.path().join("out"),
    );
    let job_id = job_id_of(&manifest);

    proxy.set_latency(Duration::from_secs(4));
    let published = Instant::now();
    emulator
        .publish(TOPIC, manifest.to_string().as_bytes())
        .await
        .unwrap();
    wait_log(&slow, "messages received");
    // A second daemon on the same subscription receives the message if Pub/Sub
    // delivers it again.
    let direct = Daemon::start(&redis, daemon_options(&table)).unwrap();

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    wait_log(&slow, "job admitted");
    let held = published.elapsed();
    proxy.set_latency(Duration::ZERO);
    let job = wait_job(&ledger, &job_id, &[&slow, &direct]).await;
    // Time for a redelivery to reach either daemon after the acknowledgement.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let logs = format!("{}\n{}", slow.log(), direct.log());
    assert_eq!(job.state, "succeeded", "{logs}");
    assert!(
        held > Duration::from_secs(10),
        "the message was held only {held:?}"
    );
    assert_eq!(messages_received(&logs), 1, "{logs}");
    assert_eq!(logs.matches("job admitted").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("redelivered message matches").count(),
        0,
        "{logs}"
    );
    assert_eq!(all_jobs(&ledger).await, vec![job_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_go_to_dead_letter_topic() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    create_topics(&emulator, 10).await;
    let daemon = Daemon::start(&redis, daemon_options(&SubscriptionTable::new(&emulator))).unwrap();
    wait_log(&daemon, "daemon started");

    let data = tempfile::tempdir().unwrap();
    let shard = write_shard(data.path(), "a.jsonl", &sample_records("a", 2));
    let mut unknown_target =
        embed_manifest("unknown-target", vec![shard], 2, &data.path().join("out"));
    unknown_target["notify"] = serde_json::json!("pubsub://projects/elsewhere/topics/notices");
    let malformed_id = emulator.publish(TOPIC, b"{not json").await.unwrap();
    let target_id = emulator
        .publish(TOPIC, unknown_target.to_string().as_bytes())
        .await
        .unwrap();

    let mut dead = emulator
        .receive(DEAD_SUBSCRIPTION, 2, Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("{error:#}\ndaemon log:\n{}", daemon.log()));
    dead.sort_by_key(|message| message.data.len());

    let malformed = &dead[0];
    assert_eq!(&malformed.data[..], b"{not json");
    let reason = &malformed.attributes["reason"];
    assert!(reason.contains("invalid JSON"), "{reason}");
    let errors: serde_json::Value = serde_json::from_str(&malformed.attributes["errors"]).unwrap();
    assert_eq!(errors.as_array().map(Vec::len), Some(1), "{errors}");
    assert_eq!(malformed.attributes["source_message_id"], malformed_id);
    assert_eq!(
        malformed.attributes["source_subscription"],
        format!("projects/{PROJECT}/subscriptions/{SUBSCRIPTION}")
    );
    assert_eq!(malformed.attributes["delivery_count"], "1");

    let rejected = &dead[1];
    assert_eq!(rejected.attributes["source_message_id"], target_id);
    let reason = &rejected.attributes["reason"];
    assert!(reason.contains("notify"), "{reason}");
    assert!(reason.contains("not accepted by this site"), "{reason}");

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    assert!(all_jobs(&ledger).await.is_empty());
    assert_intake_count(&daemon, "dead_lettered", 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_one_subscription() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    create_topics(&emulator, 10).await;
    let table = SubscriptionTable {
        max_outstanding_messages: 1,
        ..SubscriptionTable::new(&emulator)
    };
    let first = Daemon::start(&redis, daemon_options(&table)).unwrap();
    let second = Daemon::start(&redis, daemon_options(&table)).unwrap();
    for daemon in [&first, &second] {
        wait_log(daemon, "daemon started");
    }

    let data = tempfile::tempdir().unwrap();
    let output = data.path().join("out");
    let manifests: Vec<serde_json::Value> = (0..2)
        .map(|index| {
            let name = format!("shared-{index}");
            let shard = write_shard(
                data.path(),
                &format!("{name}.jsonl"),
                &sample_records(&name, 2),
            );
            embed_manifest(&name, vec![shard], 2, &output)
        })
        .collect();
    let mut job_ids: Vec<String> = manifests.iter().map(job_id_of).collect();
    job_ids.sort();

    // The first manifest goes out twice, as a retrying submitter would send it.
    for manifest in [&manifests[0], &manifests[1], &manifests[0]] {
        emulator
            .publish(TOPIC, manifest.to_string().as_bytes())
            .await
            .unwrap();
    }

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    for job_id in &job_ids {
        let job = wait_job(&ledger, job_id, &[&first, &second]).await;
        assert_eq!(
            job.state,
            "succeeded",
            "daemon logs:\n{}\n{}",
            first.log(),
            second.log()
        );
    }
    let logs = || format!("{}\n{}", first.log(), second.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs().contains("redelivered message matches") {
        assert!(
            Instant::now() < deadline,
            "the duplicate message was not handled:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let logs = logs();
    assert_eq!(all_jobs(&ledger).await, job_ids);
    assert_eq!(logs.matches("job admitted").count(), 2, "{logs}");
    assert_eq!(
        logs.matches("redelivered message matches").count(),
        1,
        "{logs}"
    );
    assert_eq!(messages_received(&logs), 3, "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_message_check_releases_message() {
    let emulator = PubsubEmulator::start().unwrap();
    create_topics(&emulator, 10).await;
    assert!(!emulator.has_waiting_message(SUBSCRIPTION).unwrap());

    emulator.publish(TOPIC, b"waiting").await.unwrap();

    // The check hands the message back each time, so it stays waiting until a
    // subscriber acknowledges it.
    assert!(emulator.has_waiting_message(SUBSCRIPTION).unwrap());
    assert!(emulator.has_waiting_message(SUBSCRIPTION).unwrap());
    let received = emulator
        .receive(SUBSCRIPTION, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(&received[0].data[..], b"waiting");
    assert!(!emulator.has_waiting_message(SUBSCRIPTION).unwrap());
}

#[test]
fn pubsub_config_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spillway.toml");
    std::fs::write(
        &path,
        "[ledger]\nurl = \"redis://127.0.0.1:1/0\"\n\
         [[intake.pubsub]]\nproject = \"p/x\"\nsubscription = \"\"\ndead_letter_topic = \"d\"\n\
         endpoint = \"grpc://x\"\nmin_lease_secs = 5\nmax_lease_secs = 4\n\
         max_outstanding_messages = 5000\nmax_deliveries = 0\n\
         [notify]\ndefault = \"sqs://nowhere/1/q\"\n",
    )
    .unwrap();

    let output = std::process::Command::new(binary("spillway"))
        .args(["--config", &path.display().to_string(), "check-config"])
        .output()
        .unwrap();

    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    for key in [
        "intake.pubsub[0].project",
        "intake.pubsub[0].subscription",
        "intake.pubsub[0].endpoint",
        "intake.pubsub[0].min_lease_secs",
        "intake.pubsub[0].max_lease_secs",
        "intake.pubsub[0].max_outstanding_messages",
        "intake.pubsub[0].max_deliveries",
        "notify.default",
    ] {
        assert!(error.contains(key), "{key} missing from: {error}");
    }
}

/// A TCP forwarder on 127.0.0.1 that delays every chunk from the client to the
/// server by a latency the test sets. Each chunk waits its own latency from its
/// arrival, so commands in flight together are not delayed one after another.
struct LatencyProxy {
    port: u16,
    latency_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl LatencyProxy {
    fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let latency_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (latency, stopped) = (Arc::clone(&latency_ms), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => return,
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let delayed = Arc::clone(&latency);
                std::thread::spawn(move || delay_copy(client, server, &delayed));
                std::thread::spawn(move || {
                    delay_copy(server_copy, client_copy, &AtomicU64::new(0))
                });
            }
        });
        Ok(Self {
            port,
            latency_ms,
            stop,
        })
    }

    fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, writing each chunk `latency_ms` after it was read.
fn delay_copy(mut from: TcpStream, to: TcpStream, latency_ms: &AtomicU64) {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(4096);
    let writer = std::thread::spawn(move || {
        let mut to = to;
        for (due, chunk) in receiver {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let due = Instant::now() + Duration::from_millis(latency_ms.load(Ordering::SeqCst));
        if sender.send((due, buffer[..read].to_vec())).is_err() {
            break;
        }
    }
    drop(sender);
    let _ = writer.join();
}
