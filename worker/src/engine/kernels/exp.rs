//! `eˣ` for f32 as a polynomial: libm's `expf` is an opaque call that keeps the softmax and
//! SiLU loops from vectorising.

/// `eˣ` for f32 without a libm call, so loops over it vectorise: `x = n·ln2 + r` with
/// `|r| ≤ ln2/2`, Cephes' degree-6 polynomial for `eʳ` (relative error ≈ 1e-7, the same
/// as `expf`), and `2ⁿ` built in the exponent bits. Inputs are clamped to where f32's
/// `eˣ` is finite and normal; below that it returns ≈ 1e-38 rather than 0 — negligible
/// next to the 1 every softmax row sums to.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (SSE2-friendly).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::super::real::Real;
    use super::*;

    #[test]
    fn vectorised_exp_matches_libm() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (-8700..8800).map(|i| i as f32 * 0.01 + 0.003).collect();
        let mut ys = xs.clone();
        f32::exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            worst = worst.max(((y as f64) - want).abs() / want);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        // Underflow stays finite and tiny instead of NaN; 0 maps to exactly 1.
        assert!(exp_f32(-1e4) < 1e-37 && exp_f32(0.0) == 1.0);
    }
}
