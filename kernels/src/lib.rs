//! Kernels that a Spillway worker runs on one task: sentence embedding, semantic
//! search over an embeddings artefact, and the training kernels' forward and
//! backward passes.

pub mod embed;
pub mod search;
pub mod train;
pub mod worker;
