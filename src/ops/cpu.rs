//! Plumbing shared by the CPU kernels of our custom ops: typed views of storage and the dtype
//! dispatch. Kernels are generic over `f32` (training) and `f64` (gradient checks).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};

/// Element types our CPU kernels are written for.
pub trait Float:
    WithDType
    + num_traits::Float
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
{
}
impl Float for f32 {}
impl Float for f64 {}

/// `slice` as f32, when `T` is f32 (the bf16 products are f32-only).
pub fn as_f32<T: Float>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: `T` is `f32` (its dtype says so), so the cast is the identity.
    (T::DTYPE == candle_core::DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) })
}

/// `as_f32`, mutably.
pub fn as_f32_mut<T: Float>(x: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    (T::DTYPE == candle_core::DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) })
}

/// The elements a contiguous layout covers.
pub fn slice<'a, T: Float>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op: operand must be contiguous");
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// The elements a contiguous layout covers, mutably (for in-place ops).
pub fn slice_mut<'a, T: Float>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Result<&'a mut [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op: operand must be contiguous");
    };
    let all: &mut [T] = match storage {
        CpuStorage::F32(v) if T::DTYPE == DType::F32 => {
            // SAFETY: `T` is `f32` (its dtype says so).
            unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
        }
        CpuStorage::F64(v) if T::DTYPE == DType::F64 => {
            // SAFETY: `T` is `f64` (its dtype says so).
            unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
        }
        other => candle_core::bail!(
            "custom op: storage of {:?} is not {:?}",
            other.dtype(),
            T::DTYPE
        ),
    };
    Ok(&mut all[start..end])
}

/// Copies a (small, frozen) tensor held by an op out as a vector of `T`.
pub fn tensor_vec<T: Float>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

/// Runs `f` on the elements of an f32 CPU tensor, made contiguous first if it is not: how a
/// custom op's backward reads its saved operands without copying them out.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("custom op: operand is not on the CPU");
    };
    f(slice::<f32>(cpu, layout)?)
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

/// A strided matrix view over a slice: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The same view as f32, when `T` is f32.
    pub fn as_f32(&self) -> Option<MatRef<'a, f32>>
    where
        T: Float,
    {
        as_f32(self.data).map(|data| MatRef {
            data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        })
    }

    /// Whether every element of the view lies inside its slice.
    pub(crate) fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c = a · b` (or `c += a · b` with `accumulate`) for a row-major `c` of `a.rows × b.cols`,
/// on gemm's kernels (AVX-512 where the CPU has it), using every core.
pub fn matmul_into<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, accumulate: bool) {
    matmul_with_threads(c, a, b, accumulate, candle_core::utils::get_num_threads())
}

/// [`matmul_into`] on the calling thread only: for the small products of work items that
/// already run in parallel (one attention head each).
pub fn matmul_serial<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, accumulate: bool) {
    matmul_with_threads(c, a, b, accumulate, 1)
}

fn matmul_with_threads<T: Float>(
    c: &mut [T],
    a: MatRef<T>,
    b: MatRef<T>,
    accumulate: bool,
    threads: usize,
) {
    assert!(a.cols == b.rows, "matmul_into: inner dimensions differ");
    assert!(c.len() >= a.rows * b.cols, "matmul_into: output too small");
    assert!(a.fits() && b.fits(), "matmul_into: view exceeds its slice");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertions above keep every access of the three views inside their slices.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            c.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}
