//! Operator commands against a running daemon: cancel, drain, completions, man page.

use std::process::Command;
use std::time::{Duration, Instant};

use spillway_common::ledger::Ledger;
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, binary, embed_manifest, job_id_of, sample_records,
    send_raw, serial, wait_finished, write_shard,
};

fn spillway(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(binary("spillway"))
        .arg("--config")
        .arg(&daemon.config_path)
        .args(args)
        .output()
        .expect("run spillway")
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let options = DaemonOptions {
        max_workers: 1,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(
        data.path(),
        "a.jsonl",
        &sample_records("a", 400),
    )];
    let manifest = embed_manifest("to-cancel", inputs, 8, &data.path().join("out"));
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger
        .job(&job_id)
        .await
        .unwrap()
        .is_none_or(|job| job.leased == 0)
    {
        assert!(
            Instant::now() < deadline,
            "job never started:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = spillway(&daemon, &["cancel", &job_id]);

    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("cancelled"));
    let job = wait_finished(&ledger, &job_id, Duration::from_secs(60)).await;
    assert_eq!(job.state, "cancelled");
    assert!(job.succeeded < 50, "the job ran to the end: {job:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.finished_jobs(10).await.unwrap() != vec![job_id.clone()] {
        assert!(
            Instant::now() < deadline,
            "job never left the active set:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        daemon.wait_log("no task left for this worker", Duration::from_secs(1))
            || daemon.log().contains("job cancelled")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_holds_messages_until_cleared() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    assert!(
        daemon.wait_log("daemon started", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(data.path(), "a.jsonl", &sample_records("a", 4))];
    let manifest = embed_manifest("drained", inputs, 4, &data.path().join("out"));
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    let output = spillway(&daemon, &["drain"]);
    assert!(output.status.success(), "{output:?}");
    // A receive already waiting when the flag is set still admits what it gets.
    assert!(
        daemon.wait_log("intake drain flag changed", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    send_raw(&redis, manifest.to_string().as_bytes()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ledger.job(&job_id).await.unwrap().is_none(),
        "admitted while draining"
    );

    let output = spillway(&daemon, &["drain", "--off"]);
    assert!(output.status.success(), "{output:?}");
    let job = wait_finished(&ledger, &job_id, Duration::from_secs(120)).await;
    assert_eq!(job.state, "succeeded", "{}", daemon.log());
}

#[test]
fn completions_and_man_page_are_generated() {
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let output = Command::new(binary("spillway"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("submit"),
            "{args:?} output lacks the submit command"
        );
    }
}
