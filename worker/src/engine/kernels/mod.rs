//! Fused CPU kernels with hand-written backward passes, for the training hot path.
//!
//! candle records one graph node per primitive op, and its backward allocates a zero-filled
//! accumulator plus a sum for every node input; a composed RMSNorm, causal softmax or
//! cross-entropy is a dozen such nodes over large tensors. The kernels here are single nodes
//! (`CustomOp1/2/3` with `bwd`), computed with row-parallel loops on rayon's pool and
//! candle's own (gemm) matmul, plus out-of-graph forms for the hand-written backward of
//! `model::llama::tape`. They cover f32 and f64 on the CPU; other dtypes and devices use the
//! composed ops in [`crate::engine::model::ops`], the reference each kernel's tests compare
//! its forward and gradients against (to 1e-5).

mod attention;
mod axpy;
mod cpu;
mod cross_entropy;
mod exp;
mod lora;
mod parallel;
mod policy;
mod precomputed;
mod real;
mod reduce;
mod rms_norm;
mod swiglu;
#[cfg(test)]
mod test_util;

pub use attention::causal_attention;
pub(crate) use attention::{AttentionSaved, attention_backward, attention_forward};
pub(crate) use axpy::add;
pub use cpu::supported;
pub(crate) use cross_entropy::lm_head_nll_grad;
pub use cross_entropy::{lm_head_nll_sum, masked_nll_sum};
pub(crate) use lora::effective_weight;
pub use lora::lora_linear;
pub use policy::{Policy, policy, with_policy};
pub use rms_norm::rms_norm;
pub(crate) use rms_norm::{add_rms_norm, rms_norm_backward_add};
pub use swiglu::silu_mul;
pub(crate) use swiglu::{silu_mul_backward, silu_mul_forward};

/// The dtype reductions and losses run in: f32, or f64 when the model is f64 (gradient
/// checks), never bf16/f16.
pub fn compute_dtype(dtype: candle_core::DType) -> candle_core::DType {
    if dtype == candle_core::DType::F64 {
        candle_core::DType::F64
    } else {
        candle_core::DType::F32
    }
}
