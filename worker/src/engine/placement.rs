//! Where a job trains: the device and the dtype its frozen base weights are kept in.
//!
//! Adapter weights, optimizer state, norms, softmax statistics and the loss are f32 whatever
//! the base dtype (`adapters::linear::adapter_dtype`, `kernels::compute_dtype`), so only the
//! frozen matrices (and the activations that flow through them) take the base dtype.

use candle_core::{DType, Device};
use tuna_spec::{BaseDtype, Method};

/// A resolved placement.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub base_dtype: DType,
}

impl Placement {
    /// f32 on the CPU: what every test and `tuna train` without `--device` use.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            base_dtype: DType::F32,
        }
    }

    /// The placement of a job asking for `dtype` with `method` on `device`. `auto` is bf16 on
    /// CUDA (half the memory and the tensor cores) and f32 on the CPU, whose bf16 matmul
    /// widens to f32 on every call (docs/engine-notes.md §1.5); methods that train base
    /// weights keep them in f32 everywhere (the spec refuses bf16/f16 for them).
    pub fn resolve(device: &Device, dtype: BaseDtype, method: &Method) -> Self {
        let base_dtype = match dtype {
            BaseDtype::F32 => DType::F32,
            BaseDtype::Bf16 => DType::BF16,
            BaseDtype::F16 => DType::F16,
            BaseDtype::Auto if device.is_cuda() && !method.trains_base_weights() => DType::BF16,
            BaseDtype::Auto => DType::F32,
        };
        Self {
            device: device.clone(),
            base_dtype,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_f32_on_the_cpu_and_for_trained_base_weights() {
        let ia3 = Method::Ia3 {
            target_modules: None,
        };
        let cpu = Device::Cpu;
        assert_eq!(
            Placement::resolve(&cpu, BaseDtype::Auto, &ia3).base_dtype,
            DType::F32
        );
        assert_eq!(
            Placement::resolve(&cpu, BaseDtype::Bf16, &ia3).base_dtype,
            DType::BF16
        );
        assert_eq!(
            Placement::resolve(&cpu, BaseDtype::Auto, &Method::Full).base_dtype,
            DType::F32
        );
    }
}
