//! Manifest validation that collects every error instead of stopping at the first.
//!
//! [`parse`] works in three steps. It reads the bytes into a JSON value, so a syntax
//! error is the only error that stops it early. It then walks the value against the
//! field tables and rules of each section and records every problem with its path, up
//! to 1000 problems and a count of the rest. Only a document with no problem is
//! deserialized into the typed [`Manifest`].

mod json;
mod rules;
mod sections;
mod training;
mod walk;

use std::fmt;

use serde_json::Value;

use super::types::{MAX_MANIFEST_BYTES, Manifest};

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestError {
    /// JSON path of the field, such as `inputs[2].sha256`; empty for the whole document.
    pub path: String,
    /// The rejected value, shortened for display; empty when the field is missing.
    pub value: String,
    /// Description of the problem.
    pub problem: String,
    /// Change that fixes it.
    pub fix: String,
}

/// Every problem found in one manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.problem)?;
        if !self.value.is_empty() {
            write!(f, " (value: {})", self.value)?;
        }
        write!(f, "; fix: {}", self.fix)
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid manifest, {} error(s):", self.0.len())?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Parses and validates a manifest, returning every problem found when it is invalid.
///
/// Property tests feed it arbitrary bytes and JSON values to check that it does not
/// panic. A deadline in the past is accepted because the submitter's clock may differ
/// from the daemon's, so the daemon decides what a missed deadline means.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestErrors> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors(vec![oversized(bytes.len())]));
    }
    let (mut document, duplicates) =
        json::read_document(bytes).map_err(|error| ManifestErrors(vec![error]))?;

    let mut report = walk::Report::default();
    for duplicate in duplicates {
        report.push(duplicate);
    }
    sections::check_manifest(&mut report, &document);
    if !report.is_empty() {
        return Err(ManifestErrors(report.into_errors()));
    }

    drop_optional_nulls(&mut document);
    serde_json::from_value(document).map_err(|error| {
        // The walk rejects everything that serde rejects, so this runs only when the
        // field tables or rules miss a case. The property tests look for this message.
        ManifestErrors(vec![ManifestError {
            path: String::new(),
            value: String::new(),
            problem: format!("invalid manifest: {error}"),
            fix: "correct the field that the message names, and report the manifest to the Spillway maintainers".into(),
        }])
    })
}

fn oversized(length: usize) -> ManifestError {
    ManifestError {
        path: String::new(),
        value: format!("{length} bytes"),
        problem: format!(
            "invalid manifest: the document is {length} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes (4 MiB)"
        ),
        fix: "merge small input shards into larger files so the manifest lists fewer of them, or split the job into several manifests".into(),
    }
}

/// Removes `null` members from the manifest's struct objects, where the walk treats
/// them as absent. serde already reads a `null` `Option` field as `None`, but a field
/// with a plain `#[serde(default)]`, such as `priority`, rejects `null`. Label values
/// stay untouched because the walk rejects a `null` label.
fn drop_optional_nulls(document: &mut Value) {
    let Some(top) = document.as_object_mut() else {
        return;
    };
    top.retain(|_, value| !value.is_null());
    for section in ["kernel", "model", "worker", "training"] {
        if let Some(object) = top.get_mut(section).and_then(Value::as_object_mut) {
            object.retain(|_, value| !value.is_null());
        }
    }
    if let Some(optimizer) = top
        .get_mut("training")
        .and_then(|training| training.get_mut("optimizer"))
        .and_then(Value::as_object_mut)
    {
        optimizer.retain(|_, value| !value.is_null());
    }
    if let Some(shards) = top.get_mut("inputs").and_then(Value::as_array_mut) {
        for shard in shards.iter_mut().filter_map(Value::as_object_mut) {
            shard.retain(|_, value| !value.is_null());
        }
    }
}
