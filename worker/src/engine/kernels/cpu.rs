//! Reading and building contiguous CPU tensors, shared by the kernels: they work on raw
//! f32/f64 slices and hand the results back to candle as tensors.

use candle_core::{CpuStorage, DType, Error, Layout, Result, Shape, Storage, StorageRef, Tensor};

use super::real::Real;

/// Whether the fused kernels handle `t` (CPU, f32 or f64) and the current
/// [`super::Policy`] allows them. Everything else (CUDA, bf16/f16) takes the composed ops.
pub fn supported(t: &Tensor) -> bool {
    super::policy() == super::Policy::Fused
        && t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::F64)
}

pub(super) fn msg(m: impl Into<String>) -> Error {
    Error::Msg(m.into())
}

/// A read guard on a contiguous CPU tensor's storage.
pub(super) struct View<'a> {
    guard: StorageRef<'a>,
    lo: usize,
    hi: usize,
}

impl View<'_> {
    pub(super) fn of(t: &Tensor) -> Result<View<'_>> {
        let (guard, layout) = t.storage_and_layout();
        let (lo, hi) = layout
            .contiguous_offsets()
            .ok_or_else(|| msg("fused op: input is not contiguous"))?;
        Ok(View { guard, lo, hi })
    }

    pub(super) fn slice<T: Real>(&self) -> Result<&[T]> {
        match &*self.guard {
            Storage::Cpu(c) => T::cpu_storage_as_slice(c)?
                .get(self.lo..self.hi)
                .ok_or_else(|| msg("fused op: storage too short")),
            _ => Err(msg("fused op: not a CPU tensor")),
        }
    }
}

pub(super) fn storage_slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (lo, hi) = l
        .contiguous_offsets()
        .ok_or_else(|| msg("fused op: input is not contiguous"))?;
    T::cpu_storage_as_slice(s)?
        .get(lo..hi)
        .ok_or_else(|| msg("fused op: storage too short"))
}

pub(super) fn tensor<T: Real>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// A storage as a tensor outside candle's graph (no gradient, no op recorded).
pub(super) fn detached(storage: CpuStorage, shape: &Shape) -> Tensor {
    Tensor::from_storage(
        Storage::Cpu(storage),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// The CPU storage behind a tensor (any layout), for candle's storage-level matmul.
pub(super) fn cpu_storage<'a>(guard: &'a StorageRef<'_>) -> Result<&'a CpuStorage> {
    match &**guard {
        Storage::Cpu(c) => Ok(c),
        _ => Err(msg("fused op: not a CPU tensor")),
    }
}

/// `lhs · rhs` for `[m, k]` and `[k, n]` views given by their layouts, with candle's CPU
/// matmul (gemm, threaded like every candle matmul); the result is an owned `[m, n]`.
pub(super) fn matmul_views(
    lhs: &CpuStorage,
    lhs_l: &Layout,
    rhs: &CpuStorage,
    rhs_l: &Layout,
    (m, n, k): (usize, usize, usize),
) -> Result<CpuStorage> {
    use candle_core::backend::BackendStorage;
    lhs.matmul(rhs, (1, m, n, k), lhs_l, rhs_l)
}

/// Calls the f32 or f64 instance of a generic kernel, picked by a storage's type.
macro_rules! dispatch {
    ($s:expr, $f:ident ( $($arg:expr),* )) => {
        match $s {
            candle_core::CpuStorage::F32(_) => $f::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => Err($crate::engine::kernels::cpu::msg("fused op: only f32/f64 are supported")),
        }
    };
}

/// Calls the f32 or f64 instance of a generic kernel, picked by a dtype.
macro_rules! dispatch_dtype {
    ($dt:expr, $f:ident ( $($arg:expr),* )) => {
        match $dt {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            _ => Err($crate::engine::kernels::cpu::msg("fused op: only f32/f64 are supported")),
        }
    };
}

pub(super) use {dispatch, dispatch_dtype};
