//! The training engine (docs/design.md §4): our own differentiable models, PEFT adapters,
//! data loading, optimizers, the one training loop and HF PEFT export.
//!
//! Gradients come from candle's autograd, or, for plain-LoRA steps on the CPU, from the
//! hand-written backward of `model::llama::tape` over the fused `kernels`. candle's own
//! fused ops (`softmax_last_dim`, fused `rms_norm`, `rope*`) silently drop gradients, so the
//! model code only uses ops that have backward rules (docs/engine-notes.md §1.2).

pub mod adapters;
pub mod bench;
pub mod classifier;
pub mod data;
pub mod export;
pub mod kernels;
pub mod lora_ga;
pub mod merge;
pub mod model;
pub mod optim;
pub mod placement;
pub mod pool;
pub mod rng;
pub mod trainer;

#[cfg(test)]
mod tests;
