//! Kernels that a Spillway worker runs on one task: sentence embedding and
//! semantic search over an embeddings artefact.

pub mod embed;
pub mod search;
pub mod worker;
