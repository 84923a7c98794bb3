//! Sweeps (docs/design.md §5): the validated sweep plan, where searched parameters land in a trial's
//! JobSpec, the durable event log of the search algorithm, and the leader-only controller.

pub mod controller;
pub mod final_merge;
pub mod log;
pub mod params;
pub mod plan;
pub mod ranking;

pub use controller::Controller;
pub use plan::SweepPlan;
