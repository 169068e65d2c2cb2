//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use std::path::Path;
use std::process::{Command, Output};

/// Runs the `offsite` binary.
pub fn offsite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offsite"))
        .args(args)
        .output()
        .expect("runs")
}

/// The standard output of a run that must have succeeded.
pub fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The largest absolute difference between two tensors of the same shape, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
