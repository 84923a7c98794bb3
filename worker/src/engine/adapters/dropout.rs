//! Dropout with masks drawn from an explicit seeded stream. candle's `ops::dropout` uses an
//! unseeded generator, which would make runs (and resumed runs) differ.

use candle_core::{Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Zeroes each element with probability `p` and scales survivors by `1 / (1 - p)`.
pub fn apply(x: &Tensor, p: f32, mut rng: ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}
