//! Tuna worker: a process per device that pulls fine-tuning jobs from the control plane
//! (`agent`) and trains them (the engine).

pub mod agent;
mod classify_runner;
pub mod engine;
pub mod runner;
