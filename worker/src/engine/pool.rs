//! The CPU thread pool training passes run on.
//!
//! A pass is a few hundred parallel kernels (candle's gemm and the fused loops) of a few
//! milliseconds each. Started from a thread outside the pool, every one of them is a
//! hand-off: the caller queues the job, sleeps, and is woken when it is done, so the
//! machine runs one thread more than it has cores and pays a wake-up per kernel. Run
//! inside the pool, the caller is itself a pool thread and the kernels split by work
//! stealing (about 15% of a CPU step on 2 cores).

use std::sync::OnceLock;

use crate::engine::kernels;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Runs `f` on the training pool: as many threads as candle uses (`RAYON_NUM_THREADS`,
/// else one per core), under the caller's kernel [`kernels::Policy`]. If the pool cannot be started,
/// `f` runs on the calling thread.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let policy = kernels::policy();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("tuna-train-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(|| kernels::with_policy(policy, f)),
        None => f(),
    }
}
