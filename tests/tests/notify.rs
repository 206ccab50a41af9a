//! Job notifications to SQS (moto) and Pub/Sub (Google's emulator), with real Redis,
//! daemon and worker processes. Requires `cargo build --bins`, and the model, moto
//! and emulator that `spillway_tests::moto` and `spillway_tests::pubsub` describe.
//! Every client is pinned to a loopback stand-in with dummy or anonymous credentials.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message as SqsMessage;
use spillway_common::ledger::Ledger;
use spillway_common::task::{job_id, slice};
use spillway_tests::moto::{MotoServer, create_queue};
use spillway_tests::pubsub::{PROJECT, PubsubEmulator};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const REGION: &str = "us-east-1";
/// Account id in the queue URLs that moto returns.
const MOTO_ACCOUNT: &str = "123456789012";
const QUEUE: &str = "job-notices";
const TOPIC: &str = "job-notices";
const READER: &str = "job-notices-reader";

fn notify_config(moto: &MotoServer, queue_url: &str, emulator: &PubsubEmulator) -> String {
    format!(
        "[notify]\ndefault = \"pubsub://projects/{PROJECT}/topics/{TOPIC}\"\ntimeout_secs = 5\n\
         retry_interval_secs = 1\n\n\
         [[notify.sqs]]\nqueue_url = \"{queue_url}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n\n\
         [[notify.pubsub]]\nproject = \"{PROJECT}\"\ntopic = \"{TOPIC}\"\nendpoint = \"{}\"\n\
         credentials = \"anonymous\"\n",
        moto.endpoint(),
        emulator.endpoint()
    )
}

/// Receives one message from an SQS queue with its attributes, waiting up to 60 s.
async fn receive_sqs(client: &aws_sdk_sqs::Client, queue_url: &str) -> SqsMessage {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no notice on {queue_url} after 60 s"
        );
        let output = client
            .receive_message()
            .queue_url(queue_url)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|error| panic!("receive from {queue_url}: {error:?}"));
        if let Some(message) = output.messages.unwrap_or_default().into_iter().next() {
            return message;
        }
    }
}

fn sqs_attribute<'a>(message: &'a SqsMessage, name: &str) -> &'a str {
    message
        .message_attributes()
        .and_then(|attributes| attributes.get(name))
        .and_then(|value| value.string_value())
        .unwrap_or_else(|| panic!("attribute {name} missing from {message:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_notify_sqs_and_pubsub() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let moto = MotoServer::start().unwrap();
    let emulator = PubsubEmulator::start().unwrap();
    emulator.create_topic(TOPIC).await.unwrap();
    emulator
        .create_subscription(READER, TOPIC, 10, None)
        .await
        .unwrap();
    // The queue is created only after the first send failed, so that the notice
    // must be retried.
    let queue_url = format!("{}/{MOTO_ACCOUNT}/{QUEUE}", moto.endpoint());
    let sqs_target = format!("sqs://127.0.0.1:{}/{MOTO_ACCOUNT}/{QUEUE}", moto.port);
    let options = DaemonOptions {
        extra_config: notify_config(&moto, &queue_url, &emulator),
        env: moto.s3_env(),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    assert!(
        daemon.wait_log("notification outbox started", Duration::from_secs(60)),
        "{}",
        daemon.log()
    );

    let data = tempfile::tempdir().unwrap();
    let output = data.path().join("out");
    let good = write_shard(data.path(), "good.jsonl", &sample_records("g", 3));
    let bad = write_shard(data.path(), "bad.jsonl", &sample_records("b", 2));

    // Succeeds, and names the SQS queue.
    let mut to_sqs = embed_manifest("notify-sqs", vec![good.clone()], 2, &output);
    to_sqs["notify"] = serde_json::json!(sqs_target);
    // Fails on a shard whose SHA-256 does not match, and gets the default topic.
    let mut bad_shard = bad.clone();
    bad_shard["sha256"] = serde_json::json!("0".repeat(64));
    let failing = embed_manifest("notify-default", vec![bad_shard], 2, &output);
    // Cancelled before any task runs, and names the topic.
    let mut cancelled = embed_manifest("notify-cancelled", vec![good.clone()], 1, &output);
    cancelled["notify"] = serde_json::json!(format!("pubsub://projects/{PROJECT}/topics/{TOPIC}"));
    // Names a target that the site does not configure.
    let mut unknown = embed_manifest("notify-unknown", vec![good], 2, &output);
    unknown["notify"] = serde_json::json!("pubsub://projects/elsewhere/topics/notices");

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let cancelled_manifest =
        spillway_common::manifest::parse(cancelled.to_string().as_bytes()).unwrap();
    let cancelled_job = job_id(&cancelled_manifest);
    ledger
        .admit(
            &cancelled_job,
            &cancelled_manifest,
            &slice(&cancelled_manifest),
        )
        .await
        .unwrap();
    let state = ledger
        .cancel_job(&cancelled_job, "cancelled by the test")
        .await
        .unwrap();
    assert_eq!(state, "cancelled");
    for manifest in [&to_sqs, &failing, &unknown] {
        send_raw(&redis, manifest.to_string().as_bytes()).await;
    }

    let sqs_job = wait_finished(&ledger, &job_id_of(&to_sqs), JOB_TIMEOUT).await;
    let failed_job = wait_finished(&ledger, &job_id_of(&failing), JOB_TIMEOUT).await;
    wait_finished(&ledger, &cancelled_job, JOB_TIMEOUT).await;
    assert_eq!(sqs_job.state, "succeeded", "{}", daemon.log());
    assert_eq!(failed_job.state, "failed", "{}", daemon.log());

    // The topic gets the failed job's notice (the default target) and the
    // cancelled one's.
    let mut notices: Vec<serde_json::Value> = emulator
        .receive(READER, 2, Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("{error:#}\ndaemon log:\n{}", daemon.log()))
        .into_iter()
        .map(|message| {
            let notice: serde_json::Value = serde_json::from_slice(&message.data).unwrap();
            assert_eq!(
                notice["job_id"], message.attributes["job_id"],
                "{message:?}"
            );
            assert_eq!(notice["state"], message.attributes["state"], "{message:?}");
            notice
        })
        .collect();
    notices.sort_by_key(|notice| notice["state"].as_str().unwrap_or_default().to_string());

    let cancelled_notice = &notices[0];
    assert_eq!(cancelled_notice["state"], "cancelled");
    assert_eq!(cancelled_notice["job_id"], cancelled_job);
    assert_eq!(cancelled_notice["run_hash"], serde_json::Value::Null);
    let failed_notice = &notices[1];
    assert_eq!(failed_notice["state"], "failed");
    assert_eq!(failed_notice["job_id"], failed_job.job_id);
    assert_eq!(failed_notice["version"], 1);
    assert_eq!(failed_notice["tasks"]["failed"], 1);
    assert_eq!(failed_notice["artefact_uri"], serde_json::Value::Null);
    assert!(
        failed_notice["run_hash"]
            .as_str()
            .is_some_and(|hash| !hash.is_empty())
    );

    // The SQS queue did not exist yet, so its notice is retried until it does.
    assert!(
        daemon.wait_log("failed to send a job notice", Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    let sqs = moto.sqs_client(REGION);
    let created = create_queue(&sqs, QUEUE, &[]).await;
    assert_eq!(created, queue_url);
    let message = receive_sqs(&sqs, &queue_url).await;
    let notice: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(sqs_attribute(&message, "job_id"), sqs_job.job_id);
    assert_eq!(sqs_attribute(&message, "state"), "succeeded");
    assert_eq!(notice["job_id"], sqs_job.job_id);
    assert_eq!(notice["state"], "succeeded");
    assert_eq!(notice["tasks"]["total"], 2);
    assert_eq!(notice["tasks"]["succeeded"], 2);
    assert_eq!(notice["records"], 3);
    assert_eq!(
        notice["artefact_uri"].as_str(),
        sqs_job.artefact_uri.as_deref()
    );
    let summary: serde_json::Value =
        serde_json::from_str(sqs_job.summary.as_deref().unwrap()).unwrap();
    assert_eq!(notice["run_hash"], summary["run_hash"]);

    // The manifest naming another target never became a job.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Each entry is [id, [field, value, ...]].
    let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("spillway:intake:dead")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let fields = &dead[0].1;
    let reason = fields
        .chunks(2)
        .find(|pair| pair[0] == "reason")
        .map(|pair| pair[1].clone())
        .unwrap_or_else(|| panic!("no reason in {fields:?}"));
    assert!(reason.contains("not accepted by this site"), "{reason}");
    assert!(reason.contains(&sqs_target), "{reason}");
    assert!(ledger.job(&job_id_of(&unknown)).await.unwrap().is_none());
}
