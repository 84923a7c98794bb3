//! The kernels' parallel loop over disjoint output chunks.

/// Runs `f(i, chunk_i)` over the `chunk`-sized pieces of `out`, in parallel on rayon's
/// current pool (the one candle's matmuls also use) when there is enough work (`work` ≈
/// element operations in total). Every piece is written by exactly one call, so results do
/// not depend on the thread count.
///
/// Not candle's barrier pool: its worker spins for a while after each job, and on a small
/// machine that spinning takes a core away from the rayon threads running the next GEMM.
pub(super) fn par_chunks<T: Send>(
    out: &mut [T],
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    if rayon::current_num_threads() <= 1 || work < 32 * 1024 || out.len() <= chunk {
        for (i, c) in out.chunks_mut(chunk).enumerate() {
            f(i, c);
        }
        return;
    }
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}
