//! Where the CPU work of a training step runs.
//!
//! candle's matmuls hand their blocks to rayon (`gemm` with `Parallelism::Rayon`). Called
//! from a thread outside a rayon pool, every matmul injects its job into the pool, wakes
//! the workers and puts the caller to sleep until they finish — a round of wake-ups per
//! GEMM, thousands per step. Run from inside candle's pool instead, the calling thread
//! takes part in its own matmuls and only the other workers need waking.

/// Runs `f` (a forward/backward/optimizer step) on candle's CPU thread pool.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    candle_core::utils::with_threadpool(f)
}
