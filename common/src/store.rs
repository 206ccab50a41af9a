//! Object store access by URI: SHA-256-verified reads and create-only writes.
//!
//! The scheme picks the store: `file:///path` for the local filesystem,
//! `s3://bucket/key` for Amazon S3 or an S3-compatible service, configured by `AWS_*`
//! environment variables (names and defaults in the `s3` submodule), and
//! `gs://bucket/key` for Google Cloud Storage, configured by Google's variables (the
//! `gcs` submodule). The daemon and its workers read the same variables. Every store
//! is an object_store [`ObjectStore`]. Results and envelopes are written with
//! [`PutMode::Create`], so a second writer of the same key gets
//! [`PutOutcome::AlreadyExisted`] and the first value stays. On S3 this is a
//! conditional `If-None-Match: *` upload, on GCS an upload with `ifGenerationMatch=0`.

mod gcs;
mod s3;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
};
use url::Url;

use crate::digest::Sha256Hex;

/// Errors from object store access, each naming the URI involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid object URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("failed to read {uri}")]
    Read {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("failed to write {uri}")]
    Write {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("SHA-256 mismatch for {uri}: expected {expected}, found {actual}")]
    DigestMismatch {
        uri: String,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
    #[error("cannot access {uri}: {reason}")]
    Config { uri: String, reason: String },
}

impl StoreError {
    /// Returns whether the error is a data error (the bytes are wrong or missing)
    /// rather than a failure that a retry may fix.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::InvalidUri { .. } | StoreError::DigestMismatch { .. } => true,
            StoreError::Read { source, .. } => {
                matches!(source, object_store::Error::NotFound { .. })
            }
            StoreError::Write { .. } | StoreError::Config { .. } => false,
        }
    }
}

/// Whether a create-only write stored new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// Another writer had already stored this key; its bytes were kept.
    AlreadyExisted,
}

/// An object store plus the path of one object in it.
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    pub uri: String,
}

/// A store whose buckets are configured by environment variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloudStore {
    S3,
    Gcs,
}

/// Resolves a URI to its store and path. S3 and GCS settings come from the process
/// environment, read once per bucket (S3) or once per process (GCS).
pub fn locate(uri: &str) -> Result<Location, StoreError> {
    resolve(uri, |cloud, bucket| match cloud {
        CloudStore::S3 => s3::env_store(bucket),
        CloudStore::Gcs => gcs::env_store(bucket),
    })
}

/// Resolves a URI like [`locate`], but builds an S3 or GCS store from `variables` (the
/// same names) in place of the process environment, without caching it.
pub fn locate_with<I>(uri: &str, variables: I) -> Result<Location, StoreError>
where
    I: IntoIterator<Item = (String, String)>,
{
    resolve(uri, |cloud, bucket| match cloud {
        CloudStore::S3 => s3::build(bucket, variables),
        CloudStore::Gcs => gcs::build(bucket, variables),
    })
}

fn resolve(
    uri: &str,
    cloud_store: impl FnOnce(CloudStore, &str) -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<Location, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUri {
        uri: uri.to_string(),
        reason,
    };
    let url = Url::parse(uri).map_err(|error| invalid(error.to_string()))?;

    let cloud = match url.scheme() {
        "s3" => Some(CloudStore::S3),
        "gs" => Some(CloudStore::Gcs),
        _ => None,
    };
    if let Some(cloud) = cloud {
        let scheme = url.scheme();
        let Some(bucket) = url.host_str().filter(|bucket| !bucket.is_empty()) else {
            return Err(invalid(format!(
                "a {scheme}:// URI needs a bucket: {scheme}://bucket/key"
            )));
        };
        let (_, path) =
            ObjectStoreScheme::parse(&url).map_err(|error| invalid(error.to_string()))?;
        let store = cloud_store(cloud, bucket).map_err(|reason| StoreError::Config {
            uri: uri.to_string(),
            reason,
        })?;
        return Ok(Location {
            store,
            path,
            uri: uri.to_string(),
        });
    }

    if url.scheme() == "file" && url.path().is_empty() {
        return Err(invalid("a file:// URI needs an absolute path".into()));
    }
    let (store, path) =
        object_store::parse_url(&url).map_err(|error| invalid(error.to_string()))?;

    Ok(Location {
        store: Arc::from(store),
        path,
        uri: uri.to_string(),
    })
}

/// Joins a prefix URI and a relative key with exactly one `/` between them.
pub fn join(prefix: &str, key: &str) -> String {
    format!(
        "{}/{}",
        prefix.trim_end_matches('/'),
        key.trim_start_matches('/')
    )
}

/// Reads a whole object.
pub async fn get(uri: &str) -> Result<Bytes, StoreError> {
    locate(uri)?.get().await
}

/// Reads a whole object and checks its SHA-256 against `expected`.
pub async fn get_verified(uri: &str, expected: &Sha256Hex) -> Result<Bytes, StoreError> {
    locate(uri)?.get_verified(expected).await
}

/// Writes an object only if its key does not exist yet.
pub async fn put_create(uri: &str, bytes: Bytes) -> Result<PutOutcome, StoreError> {
    locate(uri)?.put_create(bytes).await
}

/// Returns whether an object exists.
pub async fn exists(uri: &str) -> Result<bool, StoreError> {
    locate(uri)?.exists().await
}

impl Location {
    fn read_error(&self) -> impl Fn(object_store::Error) -> StoreError + '_ {
        |source| StoreError::Read {
            uri: self.uri.clone(),
            source,
        }
    }

    /// Reads the whole object.
    pub async fn get(&self) -> Result<Bytes, StoreError> {
        let result = self
            .store
            .get(&self.path)
            .await
            .map_err(self.read_error())?;
        result.bytes().await.map_err(self.read_error())
    }

    /// Reads the whole object and checks its SHA-256 against `expected`. The bytes are
    /// returned only when they match. The object is read whole, not as a stream:
    /// object_store streams a local file in 8 KiB chunks, one blocking task each,
    /// which made a 14 MB weights file take about 100 ms instead of about 10.
    pub async fn get_verified(&self, expected: &Sha256Hex) -> Result<Bytes, StoreError> {
        let bytes = self.get().await?;
        let actual = Sha256Hex::of(&bytes);

        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                uri: self.uri.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Writes the object only if its key does not exist yet.
    pub async fn put_create(&self, bytes: Bytes) -> Result<PutOutcome, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let outcome = self
            .store
            .put_opts(&self.path, PutPayload::from(bytes), options)
            .await;

        match outcome {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExisted),
            Err(source) => Err(StoreError::Write {
                uri: self.uri.clone(),
                source,
            }),
        }
    }

    /// Returns whether the object exists.
    pub async fn exists(&self) -> Result<bool, StoreError> {
        match self.store.head(&self.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::Read {
                uri: self.uri.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_inserts_one_slash() {
        assert_eq!(join("file:///a/", "/b"), "file:///a/b");
        assert_eq!(join("file:///a", "b"), "file:///a/b");
    }

    #[tokio::test]
    async fn second_create_keeps_first_value() {
        let dir = std::env::temp_dir().join(format!("spillway-store-{}", std::process::id()));
        let uri = format!("file://{}/result.bin", dir.display());

        let first = put_create(&uri, Bytes::from_static(b"first"))
            .await
            .unwrap();
        let second = put_create(&uri, Bytes::from_static(b"second"))
            .await
            .unwrap();

        assert_eq!(first, PutOutcome::Created);
        assert_eq!(second, PutOutcome::AlreadyExisted);
        assert_eq!(get(&uri).await.unwrap(), Bytes::from_static(b"first"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn digest_mismatch_is_a_data_error() {
        let dir = std::env::temp_dir().join(format!("spillway-verify-{}", std::process::id()));
        let uri = format!("file://{}/shard.jsonl", dir.display());
        put_create(&uri, Bytes::from_static(b"data")).await.unwrap();

        let error = get_verified(&uri, &Sha256Hex::of(b"other"))
            .await
            .unwrap_err();

        assert!(matches!(error, StoreError::DigestMismatch { .. }));
        assert!(error.is_data_error());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
