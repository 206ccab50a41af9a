//! Object store helpers shared by the S3 and GCS tests: create-only uploads,
//! downloads, copies of local shards and models into a bucket, and the comparison of
//! two embed jobs and their artefacts. Every helper takes the store's settings as environment
//! variables (such as `FakeGcsServer::env`), so no client reads the test process's
//! own environment.

use std::path::Path;

use bytes::Bytes;
use spillway_common::artefact::EmbeddingBlock;
use spillway_common::ledger::JobRecord;
use spillway_common::model::MODEL_FILES;
use spillway_common::store::{self, PutOutcome};

/// Writes `bytes` to `uri` create-only, and panics unless the key was new.
pub async fn put_object(uri: &str, bytes: Vec<u8>, env: &[(String, String)]) {
    let outcome = store::locate_with(uri, env.to_vec())
        .unwrap_or_else(|error| panic!("locate {uri}: {error:?}"))
        .put_create(Bytes::from(bytes))
        .await
        .unwrap_or_else(|error| panic!("upload {uri}: {error:?}"));
    assert_eq!(outcome, PutOutcome::Created, "{uri} existed already");
}

/// Reads the whole object at `uri`.
pub async fn get_object(uri: &str, env: &[(String, String)]) -> Bytes {
    store::locate_with(uri, env.to_vec())
        .unwrap_or_else(|error| panic!("locate {uri}: {error:?}"))
        .get()
        .await
        .unwrap_or_else(|error| panic!("download {uri}: {error:?}"))
}

/// Uploads the bytes of a local shard to `uri` and returns its manifest entry with
/// the new URI and the same SHA-256 and record count.
pub async fn upload_shard(
    file_entry: &serde_json::Value,
    uri: &str,
    env: &[(String, String)],
) -> serde_json::Value {
    let path = file_entry["uri"]
        .as_str()
        .and_then(|uri| uri.strip_prefix("file://"))
        .expect("a file:// shard");
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("failed to read {path}: {error}"));
    put_object(uri, bytes, env).await;

    let mut entry = file_entry.clone();
    entry["uri"] = serde_json::json!(uri);
    entry
}

/// Uploads the files of the model folder `dir` that the model digest covers to the
/// directory URI `prefix` (ending in `/`), so that a manifest can name `prefix` as
/// its model with the digest of `dir`.
pub async fn upload_model(dir: &Path, prefix: &str, env: &[(String, String)]) {
    for name in MODEL_FILES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
        put_object(&store::join(prefix, name), bytes, env).await;
    }
}

/// Decodes two embedding artefacts and asserts that they contain the same ids in the
/// same order and bit-identical rows. Returns the decoded `actual`.
///
/// Only the decoded rows and ids are compared, not the bytes, because each
/// artefact's header also stores its job id, which differs whenever the manifests'
/// URIs do.
pub fn assert_same_embeddings(expected: &[u8], actual: &[u8]) -> EmbeddingBlock {
    let expected = EmbeddingBlock::decode(expected).expect("expected artefact decodes");
    let actual = EmbeddingBlock::decode(actual).expect("actual artefact decodes");

    assert_eq!(actual.ids, expected.ids);
    assert_eq!(actual.dimension, expected.dimension);
    assert_eq!(actual.values.len(), expected.values.len());
    let first_difference = actual
        .values
        .iter()
        .zip(&expected.values)
        .position(|(actual, expected)| actual.to_bits() != expected.to_bits());
    assert_eq!(
        first_difference, None,
        "embedding values differ, first at index {first_difference:?}"
    );
    actual
}

/// Asserts that an embed job on local files and the same job on a cloud store both
/// succeeded with the same number of tasks and wrote the same ids and rows (see
/// [`assert_same_embeddings`]). `logs` goes into the assertion messages. Returns the
/// cloud job's decoded artefact.
pub async fn assert_embed_parity(
    file_job: &JobRecord,
    cloud_job: &JobRecord,
    env: &[(String, String)],
    logs: &str,
) -> EmbeddingBlock {
    assert_eq!(file_job.state, "succeeded", "{file_job:?}\n{logs}");
    assert_eq!(cloud_job.state, "succeeded", "{cloud_job:?}\n{logs}");
    assert_eq!(cloud_job.tasks_total, file_job.tasks_total);

    let file_uri = file_job
        .artefact_uri
        .as_deref()
        .expect("file job has an artefact");
    let cloud_uri = cloud_job
        .artefact_uri
        .as_deref()
        .expect("cloud job has an artefact");
    let file_artefact = get_object(file_uri, env).await;
    let cloud_artefact = get_object(cloud_uri, env).await;
    assert_same_embeddings(&file_artefact, &cloud_artefact)
}
