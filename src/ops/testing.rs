//! Test helpers shared by the op and model tests: seeded random tensors, closeness assertions and
//! a finite-difference gradient check.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// A tensor of uniform values in [-1, 1), the same for the same seed.
pub fn rand_tensor(shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Asserts that two tensors have the same shape and differ by at most `tol` anywhere.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = max_abs_diff(a, b)?;
    assert!(diff <= tol, "max |a - b| = {diff:e} > {tol:e}");
    Ok(())
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Checks the autograd gradients of `f` with respect to every input against central finite
/// differences, in f64. The scalar loss is `sum(f(inputs) * r)` for a fixed random `r`, so every
/// output element's gradient path is exercised with a different weight.
pub fn check_gradients(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let r = rand_tensor(out.dims(), DType::F64, 4242)?;
    let loss = |ts: &[Tensor]| -> Result<f64> { (f(ts)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let grads = (out * &r)?.sum_all()?.backward()?;
    let eps = 1e-6;
    for (i, var) in vars.iter().enumerate() {
        let analytic = grads
            .get(var)
            .unwrap_or_else(|| panic!("input {i} got no gradient"))
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for (j, &a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut data = base.clone();
                data[j] += delta;
                let mut ts = tensors.clone();
                ts[i] = Tensor::from_vec(data, var.dims(), &Device::Cpu)?;
                loss(&ts)
            };
            let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let tol = 1e-6 * (1.0 + numeric.abs());
            assert!(
                (a - numeric).abs() <= tol,
                "input {i} element {j}: autograd {a:e} vs finite difference {numeric:e}"
            );
        }
    }
    Ok(())
}

/// [`check_gradients`] for a one-input function with a random input of `shape`.
pub fn finite_difference_check(
    shape: &[usize],
    seed: u64,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let x = rand_tensor(shape, DType::F64, seed)?;
    check_gradients(&[x], |ts| f(&ts[0]))
}
