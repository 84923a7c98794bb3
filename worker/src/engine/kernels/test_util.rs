//! What every kernel's tests share: seeded inputs and the comparison of a kernel's forward
//! and gradients with its composed-op reference.

use candle_core::{DType, Device, Result, Tensor, Var};

pub(super) fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    use rand::Rng;
    // The stream's name predates the kernels' move out of `model::fused`; it fixes the inputs.
    let mut g = crate::engine::rng::stream(seed, "fused-test");
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| g.random_range(-1.5..1.5)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub(super) fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(1.0)
}

/// Forward values and the gradients of `sum(f(inputs) · r)` for both implementations.
pub(super) fn compare(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f64,
) {
    let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let r = rand(y.dims(), 77, y.dtype());
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v).expect("gradient reaches every input").clone())
            .collect();
        (y, gs)
    };
    let (yf, gf) = run(&fused);
    let (yc, gc) = run(&composed);
    assert_eq!(yf.dims(), yc.dims());
    assert!(
        rel_diff(&yf, &yc) <= tol,
        "forward differs: {}",
        rel_diff(&yf, &yc)
    );
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        assert!(
            rel_diff(a, b) <= tol,
            "gradient {i} differs: {}",
            rel_diff(a, b)
        );
    }
}
