//! Manifest validation that collects every error instead of stopping at the first.

use std::fmt;

use super::types::Manifest;

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestError {
    /// JSON path of the field, such as `inputs[2].sha256`; empty for the whole document.
    pub path: String,
    /// The rejected value, shortened for display; empty when the field is missing.
    pub value: String,
    /// What is wrong.
    pub problem: String,
    /// What to change.
    pub fix: String,
}

/// Every problem found in one manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
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

/// Parses and validates a manifest.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestErrors> {
    // TODO: replace with the collecting validator.
    serde_json::from_slice(bytes).map_err(|error| {
        ManifestErrors(vec![ManifestError {
            path: String::new(),
            value: String::new(),
            problem: error.to_string(),
            fix: "send a JSON manifest v1".into(),
        }])
    })
}
