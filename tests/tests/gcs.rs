//! GCS shards, results, envelopes and artefacts against fake-gcs-server, with real
//! Redis, daemon and worker processes. Requires `cargo build --bins`, and the model
//! and fake-gcs-server that scripts/install-deps.sh installs. Every GCS client here,
//! in this process and in the daemons and workers, reaches fake-gcs-server on
//! 127.0.0.1 through `STORAGE_EMULATOR_HOST` without credentials, so no request goes
//! to Google or to a metadata server.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::Ledger;
use spillway_common::store::{self, Location, PutOutcome, StoreError};
use spillway_tests::gcs::FakeGcsServer;
use spillway_tests::objects::{assert_embed_parity, get_object, put_object, upload_shard};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const BUCKET: &str = "spillway-data";

fn locate(gcs: &FakeGcsServer, uri: &str) -> Location {
    store::locate_with(uri, gcs.env()).unwrap_or_else(|error| panic!("locate {uri}: {error:?}"))
}

async fn put_gcs(gcs: &FakeGcsServer, uri: &str, bytes: Vec<u8>) {
    put_object(uri, bytes, &gcs.env()).await;
}

async fn get_gcs(gcs: &FakeGcsServer, uri: &str) -> Bytes {
    get_object(uri, &gcs.env()).await
}

/// Uploads the bytes of a local shard to `gs://BUCKET/key` and returns its manifest
/// entry.
async fn upload_gcs_shard(
    gcs: &FakeGcsServer,
    file_entry: &serde_json::Value,
    key: &str,
) -> serde_json::Value {
    upload_shard(file_entry, &format!("gs://{BUCKET}/{key}"), &gcs.env()).await
}

/// Options of a daemon whose environment, which its workers inherit, points GCS at
/// the fake server.
fn daemon_options(gcs: &FakeGcsServer) -> DaemonOptions {
    DaemonOptions {
        env: gcs.env(),
        ..DaemonOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_objects_round_trip() {
    let gcs = FakeGcsServer::start().unwrap();
    gcs.create_bucket(BUCKET).unwrap();
    let shard_uri = format!("gs://{BUCKET}/shards/a.jsonl");
    let body = b"{\"id\":\"a-0\",\"text\":\"first\"}\n".to_vec();

    put_gcs(&gcs, &shard_uri, body.clone()).await;
    let shard = locate(&gcs, &shard_uri);

    assert_eq!(shard.get().await.unwrap(), Bytes::from(body.clone()));
    assert_eq!(
        shard.get_verified(&Sha256Hex::of(&body)).await.unwrap(),
        Bytes::from(body.clone())
    );
    assert!(shard.exists().await.unwrap());

    let missing = locate(&gcs, &format!("gs://{BUCKET}/shards/missing.jsonl"));
    assert!(!missing.exists().await.unwrap());
    let error = missing.get().await.unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Read {
                source: object_store::Error::NotFound { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_data_error());

    // The rest of object_store's trait, as other callers would use it.
    let store = &shard.store;
    let head = store.head(&shard.path).await.unwrap();
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(
        store.get_range(&shard.path, 2..6).await.unwrap(),
        Bytes::from(body[2..6].to_vec())
    );
    // fake-gcs-server 1.54 ignores preconditions on copies, so only the plain copy
    // is tested here.
    let copy = Path::from("shards/b.jsonl");
    store.copy(&shard.path, &copy).await.unwrap();
    assert_eq!(
        store.get(&copy).await.unwrap().bytes().await.unwrap(),
        Bytes::from(body.clone())
    );
    store
        .put(
            &Path::from("shards/nested/c.jsonl"),
            PutPayload::from_static(b"c"),
        )
        .await
        .unwrap();
    store
        .put(
            &Path::from("shardsx/d.jsonl"),
            PutPayload::from_static(b"d"),
        )
        .await
        .unwrap();

    let mut listed: Vec<String> = store
        .list(Some(&Path::from("shards")))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        ["shards/a.jsonl", "shards/b.jsonl", "shards/nested/c.jsonl"]
    );
    let level = store
        .list_with_delimiter(Some(&Path::from("shards")))
        .await
        .unwrap();
    let mut objects: Vec<String> = level
        .objects
        .iter()
        .map(|meta| meta.location.to_string())
        .collect();
    objects.sort();
    assert_eq!(objects, ["shards/a.jsonl", "shards/b.jsonl"]);
    assert_eq!(level.common_prefixes, vec![Path::from("shards/nested")]);

    store.delete(&copy).await.unwrap();
    assert!(
        !locate(&gcs, &format!("gs://{BUCKET}/shards/b.jsonl"))
            .exists()
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_create_only_write_keeps_first_value() {
    let gcs = FakeGcsServer::start().unwrap();
    gcs.create_bucket(BUCKET).unwrap();
    let uri = format!("gs://{BUCKET}/out/job/results/t000000.safetensors");

    // Two stores with clients of their own stand for two workers writing one result.
    let first_writer = locate(&gcs, &uri);
    let second_writer = locate(&gcs, &uri);
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
    assert_eq!(get_gcs(&gcs, &uri).await, Bytes::from_static(b"first"));
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

    // Writers racing for a fresh key: exactly one creates it.
    let race_uri = format!("gs://{BUCKET}/out/job/results/t000001.safetensors");
    let writers: Vec<_> = (0..4u8)
        .map(|index| {
            let location = locate(&gcs, &race_uri);
            tokio::spawn(async move { location.put_create(Bytes::from(vec![index; 64])).await })
        })
        .collect();
    let mut created = Vec::new();
    for (index, writer) in writers.into_iter().enumerate() {
        if writer.await.unwrap().unwrap() == PutOutcome::Created {
            created.push(index as u8);
        }
    }
    assert_eq!(
        created.len(),
        1,
        "writers that created the key: {created:?}"
    );
    assert_eq!(
        get_gcs(&gcs, &race_uri).await,
        Bytes::from(vec![created[0]; 64])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_embed_job_matches_file_run() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let gcs = FakeGcsServer::start().unwrap();
    gcs.create_bucket(BUCKET).unwrap();
    let daemon = Daemon::start(&redis, daemon_options(&gcs)).unwrap();

    let data = tempfile::tempdir().unwrap();
    let file_inputs = vec![
        write_shard(data.path(), "a.jsonl", &sample_records("a", 13)),
        write_shard(data.path(), "b.jsonl", &sample_records("b", 9)),
    ];
    let gcs_inputs = vec![
        upload_gcs_shard(&gcs, &file_inputs[0], "shards/a.jsonl").await,
        upload_gcs_shard(&gcs, &file_inputs[1], "shards/b.jsonl").await,
    ];
    let output = data.path().join("out");
    let file_manifest = embed_manifest("gcs-file", file_inputs, 4, &output);
    let mut gcs_manifest = embed_manifest("gcs-gs", gcs_inputs, 4, &output);
    gcs_manifest["output"] = serde_json::json!(format!("gs://{BUCKET}/out/"));
    let file_job = job_id_of(&file_manifest);
    let gcs_job = job_id_of(&gcs_manifest);

    // Submitted through the Redis stream, so that this test covers the stores alone.
    send_raw(&redis, file_manifest.to_string().as_bytes()).await;
    send_raw(&redis, gcs_manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let file_record = wait_finished(&ledger, &file_job, JOB_TIMEOUT).await;
    let gcs_record = wait_finished(&ledger, &gcs_job, JOB_TIMEOUT).await;

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

    let job_prefix = locate(&gcs, &format!("gs://{BUCKET}/out/{gcs_job}/job.json"));
    assert!(job_prefix.exists().await.unwrap());
    let store = &job_prefix.store;
    let results = store
        .list(Some(&Path::from(format!("out/{gcs_job}/results"))))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(results.len(), 7);
    let envelopes = store
        .list(Some(&Path::from(format!("out/{gcs_job}/envelopes"))))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert!(envelopes.len() >= 7, "{envelopes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_shard_with_wrong_sha_fails_task() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let gcs = FakeGcsServer::start().unwrap();
    gcs.create_bucket(BUCKET).unwrap();
    let daemon = Daemon::start(&redis, daemon_options(&gcs)).unwrap();

    let data = tempfile::tempdir().unwrap();
    let good = write_shard(data.path(), "good.jsonl", &sample_records("g", 4));
    let bad = write_shard(data.path(), "bad.jsonl", &sample_records("b", 4));
    let good = upload_gcs_shard(&gcs, &good, "shards/good.jsonl").await;
    let mut bad = upload_gcs_shard(&gcs, &bad, "shards/bad.jsonl").await;
    bad["sha256"] = serde_json::json!("0".repeat(64));
    let mut manifest = embed_manifest("gcs-mismatch", vec![good, bad], 4, &data.path().join("out"));
    manifest["output"] = serde_json::json!(format!("gs://{BUCKET}/out/"));
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
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
        reason.contains(&format!("gs://{BUCKET}/shards/bad.jsonl")),
        "{reason}"
    );
}
