//! Whether the fused CPU kernels may be used, per thread.
//!
//! On CUDA (and for bf16/f16) the engine runs the composed ops of
//! [`crate::engine::model::ops`] and candle's autograd. Forcing that path on the CPU lets tests
//! prove that what a GPU runs is the maths the CPU kernels are checked against
//! (`engine/tests/device_generic.rs`). The policy is per thread and scoped;
//! [`crate::engine::pool::install`] carries the caller's policy onto the training pool.

use std::cell::Cell;

/// Which implementation the hot ops take on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The fused kernels (and the hand-written backward) wherever they apply.
    #[default]
    Fused,
    /// Only the composed, device-generic ops with candle's autograd: the CUDA path.
    Composed,
}

thread_local! {
    static POLICY: Cell<Policy> = const { Cell::new(Policy::Fused) };
}

/// The policy of the calling thread.
pub fn policy() -> Policy {
    POLICY.with(Cell::get)
}

/// Runs `f` with `policy` on this thread, restoring the previous one afterwards (also when
/// `f` panics).
pub fn with_policy<R>(policy: Policy, f: impl FnOnce() -> R) -> R {
    struct Restore(Policy);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(POLICY.with(|p| p.replace(policy)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_scoped_and_restored() {
        assert_eq!(policy(), Policy::Fused);
        let inner = with_policy(Policy::Composed, || {
            let nested = with_policy(Policy::Fused, policy);
            (policy(), nested)
        });
        assert_eq!(inner, (Policy::Composed, Policy::Fused));
        assert_eq!(policy(), Policy::Fused);
        let t = candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        assert!(super::super::supported(&t));
        assert!(!with_policy(Policy::Composed, || super::super::supported(
            &t
        )));
        // The training pool runs under its caller's policy.
        let on_pool = with_policy(Policy::Composed, || crate::engine::pool::install(policy));
        assert_eq!(on_pool, Policy::Composed);
    }
}
