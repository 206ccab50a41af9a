//! Manifest v1: the JSON document a scientist submits to describe one job.
//!
//! `parse` turns raw bytes into a [`Manifest`] or into [`ManifestErrors`], which lists
//! every problem at once with its field path, the rejected value and the fix.

mod training;
mod types;
mod validate;

pub use training::*;
pub use types::*;
pub use validate::{ManifestError, ManifestErrors, parse};
