//! Tuna worker: a process per device that pulls fine-tuning jobs from the control plane
//! (`agent`) and trains them (the engine).

pub mod agent;
pub mod engine;
pub mod runner;
