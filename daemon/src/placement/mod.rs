//! Placement: how many workers each job should have on each backend, and why.
//!
//! Terms used throughout this module:
//! - A **pool** backend (Slurm or local) runs on GPUs that are paid for whether they
//!   are busy or not, so placement fills it first.
//! - A **burst** backend (AWS Batch, one per job queue) rents workers by the hour.
//!   Work goes there only when the pool cannot finish it in time: that share **spills**.
//! - A job's **current** workers on a backend are those running plus those requested
//!   but not yet visible as running. Placement never plans below this count: it scales
//!   in only by requesting no more, and workers exit when no task is left.
//! - A **snapshot** is everything placement reads; a **plan** is what it returns: one
//!   [`Decision`] per job and backend, each with a [`Reason`].
//!
//! The engine is a pure function of a snapshot, the settings and one small
//! [`PlacementMemory`] (when each burst request was last raised), with no I/O and no
//! clock: `now` is part of the snapshot. So `spillway simulate` runs the same code as
//! the daemon. `docs/placement.md` gives the formulas and the knobs.
//!
//! This module uses nothing else from the daemon, so that the placement benchmark can
//! compile it on its own.

mod budget;
mod engine;
mod estimate;
mod reason;
mod settings;
pub mod sim;
mod snapshot;

#[cfg(test)]
mod tests;

// The placement benchmark includes this module by path and uses the whole interface;
// the daemon uses only part of it.
#[allow(unused_imports)]
pub use engine::{PlacementMemory, Placer, plan};
pub use estimate::{DurationEstimator, EstimatorSettings};
#[allow(unused_imports)]
pub use reason::{Limit, Reason};
pub use settings::PlacementSettings;
#[allow(unused_imports)]
pub use snapshot::{
    BackendKind, BackendSnapshot, Caps, Decision, JobPlan, JobSnapshot, Plan, Snapshot, WorkerCount,
};
