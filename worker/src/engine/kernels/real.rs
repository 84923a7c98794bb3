//! The float types the kernels are generic over (f32 and f64), each with its own `exp`.

use candle_core::WithDType;

use super::exp::exp_f32;

/// The float types the fused kernels run in.
pub(super) trait Real: WithDType {
    fn exp_(self) -> Self;
    /// `x ← eˣ` over a slice; f32 uses a polynomial the compiler vectorises.
    fn exp_in_place(xs: &mut [Self]);
    fn ln_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn neg_infinity() -> Self;
}

macro_rules! impl_real {
    ($($t:ident => $exp:path),*) => {$(
        impl Real for $t {
            fn exp_(self) -> Self {
                $exp(self)
            }
            fn exp_in_place(xs: &mut [Self]) {
                for x in xs {
                    *x = $exp(*x);
                }
            }
            fn ln_(self) -> Self {
                self.ln()
            }
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            fn neg_infinity() -> Self {
                $t::NEG_INFINITY
            }
        }
    )*};
}

impl_real!(f32 => exp_f32, f64 => f64::exp);
