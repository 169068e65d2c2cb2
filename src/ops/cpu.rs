//! Plumbing shared by the CPU kernels of our custom ops: typed views of storage and the dtype
//! dispatch. Kernels are generic over `f32` (training) and `f64` (gradient checks).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};

/// Element types our CPU kernels are written for.
pub trait Float:
    WithDType + num_traits::Float + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign
{
}
impl Float for f32 {}
impl Float for f64 {}

/// The elements a contiguous layout covers.
pub fn slice<'a, T: Float>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op: operand must be contiguous");
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Copies a (small, frozen) tensor held by an op out as a vector of `T`.
pub fn tensor_vec<T: Float>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

/// The element type of CPU storage.
pub fn dtype(s: &CpuStorage) -> DType {
    s.dtype()
}

/// Wraps a kernel result as storage.
pub fn storage<T: Float>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}

/// Calls `$body` with `$t` bound to the Rust type of `$dtype` (f32 or f64).
macro_rules! dispatch_float {
    ($dtype:expr, $name:expr, $t:ident => $body:expr) => {
        match $crate::ops::cpu::dtype($dtype) {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?} (f32 or f64)", $name),
        }
    };
}
pub(crate) use dispatch_float;
