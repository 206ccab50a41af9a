//! The Redis stream intake: messages that a stopped consumer held are reclaimed, and
//! a message delivered too often is set aside.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use spillway_common::ledger::Ledger;
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const STREAM: &str = "spillway:intake";
const GROUP: &str = "spillway";

/// Reads the stream's new messages as a consumer that then stops without acknowledging.
async fn take_without_ack(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", STREAM, GROUP, "0", "MKSTREAM"][..])
        .query_async(conn)
        .await
        .unwrap_or(());
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(
            &[
                "GROUP",
                GROUP,
                "crashed-daemon",
                "COUNT",
                "10",
                "STREAMS",
                STREAM,
                ">",
            ][..],
        )
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stuck_message_is_reclaimed() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(data.path(), "a.jsonl", &sample_records("a", 4))];
    let manifest = embed_manifest("reclaimed", inputs, 4, &data.path().join("out"));
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    take_without_ack(&mut conn).await;
    let options = DaemonOptions {
        claim_idle_secs: 1,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, Duration::from_secs(120)).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    let pending: redis::streams::StreamPendingReply = conn.xpending(STREAM, GROUP).await.unwrap();
    assert_eq!(pending.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_delivered_too_often_is_set_aside() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let message_id = send_raw(&redis, b"{\"version\": 1}").await;
    take_without_ack(&mut conn).await;
    // Mark the message as delivered nine times, as after repeated daemon crashes.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(
            &[
                STREAM,
                GROUP,
                "crashed-daemon",
                "0",
                &message_id,
                "RETRYCOUNT",
                "9",
            ][..],
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let options = DaemonOptions {
        claim_idle_secs: 1,
        max_deliveries: 5,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters: redis::streams::StreamRangeReply =
            conn.xrange_all("spillway:intake:dead").await.unwrap();
        if !letters.ids.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dead-lettered; daemon log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = match letters.ids[0].map.get("reason") {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        other => panic!("no reason: {other:?}"),
    };
    assert!(reason.contains("delivered 10 times"), "{reason}");
}
