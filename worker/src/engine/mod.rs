//! The training engine (DESIGN.md §4): our own differentiable models, PEFT adapters, data
//! loading, optimizers, the training loop and HF PEFT export.
//!
//! Everything runs through candle's autograd. candle's fused kernels (`softmax_last_dim`,
//! fused `rms_norm`, `rope*`) silently drop gradients, so the model code here only uses
//! ops that have backward rules (see `reference/candle_peft.md` §1.2).

pub mod adapters;
pub mod bench;
pub mod classifier;
pub mod data;
pub mod export;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod pool;
pub mod rng;
pub mod trainer;

#[cfg(test)]
mod tests;
