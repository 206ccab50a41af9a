//! Fetching and verifying the job's model.

use std::path::PathBuf;

use bytes::Bytes;
use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::Manifest;
use spillway_common::model::{MODEL_FILES, model_digest};
use spillway_common::store::{self, StoreError};

use super::WorkerConfig;

/// Errors while fetching the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("failed to fetch model file")]
    Fetch(#[from] StoreError),
    #[error("model at {uri} has digest {actual}, but the manifest pins {expected}")]
    DigestMismatch {
        uri: String,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
    #[error("failed to write the model cache at {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    pub fn is_data_error(&self) -> bool {
        match self {
            ModelError::Fetch(error) => error.is_data_error(),
            ModelError::DigestMismatch { .. } => true,
            ModelError::Cache { .. } => false,
        }
    }
}

/// Fetches the model files, checks the model digest and returns a local directory
/// that holds them. A `file://` model is loaded in place; other stores are copied
/// into the cache folder under the digest.
pub async fn fetch(manifest: &Manifest, config: &WorkerConfig) -> Result<PathBuf, ModelError> {
    let uri = &manifest.model.uri;
    let mut files: Vec<Bytes> = Vec::with_capacity(MODEL_FILES.len());
    for name in MODEL_FILES {
        files.push(store::get(&store::join(uri, name)).await?);
    }

    let digests = [
        Sha256Hex::of(&files[0]),
        Sha256Hex::of(&files[1]),
        Sha256Hex::of(&files[2]),
    ];
    let actual = model_digest(&digests);
    if actual != manifest.model.sha256 {
        return Err(ModelError::DigestMismatch {
            uri: uri.clone(),
            expected: manifest.model.sha256.clone(),
            actual,
        });
    }

    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    write_cache(config, &actual, &files)
}

fn write_cache(
    config: &WorkerConfig,
    digest: &Sha256Hex,
    files: &[Bytes],
) -> Result<PathBuf, ModelError> {
    let dir = config.cache_dir.join("models").join(digest.as_str());
    if dir.exists() {
        return Ok(dir);
    }
    let cache_error = |path: PathBuf| move |source| ModelError::Cache { path, source };

    // Write into a private folder and rename it, so a crash never leaves a partial model
    // under the digest's name.
    let staging =
        config
            .cache_dir
            .join("models")
            .join(format!(".{}-{}", digest, std::process::id()));
    std::fs::create_dir_all(&staging).map_err(cache_error(staging.clone()))?;
    for (name, bytes) in MODEL_FILES.iter().zip(files) {
        let path = staging.join(name);
        std::fs::write(&path, bytes).map_err(cache_error(path.clone()))?;
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another worker on this host finished first; its copy is identical.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(source) => Err(ModelError::Cache { path: dir, source }),
    }
}
