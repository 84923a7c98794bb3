//! Row reductions over 8 interleaved lanes: the compiler vectorises them, and their fixed
//! summation order keeps results independent of the thread count.

use super::real::Real;

/// Sum over 8 interleaved lanes: vectorisable, and a fixed order (deterministic).
pub(super) fn lane_sum<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut total = T::zero();
    for a in acc {
        total += a;
    }
    for &x in rest {
        total += x;
    }
    total
}

/// Maximum over 8 interleaved lanes (vectorisable); `-inf` for an empty slice.
pub(super) fn lane_max<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = T::neg_infinity();
    for x in acc.into_iter().chain(rest.iter().copied()) {
        if x > m {
            m = x;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_match_serial() {
        let v: Vec<f64> = (0..37).map(|i| ((i * 7919) % 101) as f64 - 50.0).collect();
        assert_eq!(lane_sum(&v), v.iter().sum::<f64>());
        assert_eq!(lane_max(&v), 50.0);
        assert_eq!(lane_max::<f64>(&[]), f64::NEG_INFINITY);
    }
}
