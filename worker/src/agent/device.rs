//! The device a worker advertises, opened before it registers: a worker never advertises a
//! device it cannot train on (the server matches jobs by it).

use super::AgentError;

/// What `--device` / `[worker] device` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    Cpu,
    /// CUDA device `index` (`cuda` is `cuda:0`).
    Cuda {
        index: usize,
    },
}

/// An opened device and what the worker reports about it in `RegisterWorker`.
#[derive(Debug, Clone)]
pub struct OpenedDevice {
    pub kind: WorkerDevice,
    pub device: candle_core::Device,
    /// For example `NVIDIA H200`; `cpu` for the CPU.
    pub name: String,
    /// Device memory in bytes (0 when unknown: the CPU).
    pub total_memory: i64,
    pub free_memory: i64,
}

impl WorkerDevice {
    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, AgentError> {
        let unknown = || {
            let shown: String = s.chars().take(64).collect();
            AgentError::Config(format!(
                "unknown device {shown:?}; expected cpu, cuda or cuda:N"
            ))
        };
        match s {
            "cpu" => Ok(WorkerDevice::Cpu),
            "cuda" => Ok(WorkerDevice::Cuda { index: 0 }),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(unknown)?;
                let index = n.parse::<usize>().map_err(|_| unknown())?;
                Ok(WorkerDevice::Cuda { index })
            }
        }
    }

    /// Parses and opens the device, or says why this worker cannot train on it.
    pub fn open(s: &str) -> Result<OpenedDevice, AgentError> {
        let kind = Self::parse(s)?;
        match kind {
            WorkerDevice::Cpu => Ok(OpenedDevice {
                kind,
                device: candle_core::Device::Cpu,
                name: "cpu".into(),
                total_memory: 0,
                free_memory: 0,
            }),
            WorkerDevice::Cuda { index } => open_cuda(index).map_err(AgentError::Config),
        }
    }

    /// The name the server matches jobs' `resources.device` against.
    pub fn kind(self) -> &'static str {
        match self {
            WorkerDevice::Cpu => "cpu",
            WorkerDevice::Cuda { .. } => "cuda",
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<OpenedDevice, String> {
    let refuse = |e: &dyn std::fmt::Display| {
        // candle appends a backtrace to its errors when RUST_BACKTRACE is set: keep the cause.
        let e = e.to_string();
        let e = e.lines().next().unwrap_or_default();
        format!(
            "device cuda:{index} cannot be opened: {e}. Is the NVIDIA driver installed and a \
             GPU visible (nvidia-smi; CUDA_VISIBLE_DEVICES)? Run the worker with --device cpu \
             to train on the CPU"
        )
    };
    let device = candle_core::Device::new_cuda(index).map_err(|e| refuse(&e))?;
    let cuda = device.as_cuda_device().map_err(|e| refuse(&e))?;
    let context = cuda.cuda_stream().context().clone();
    let name = context.name().map_err(|e| refuse(&e))?;
    let (free, total) = context.mem_get_info().map_err(|e| refuse(&e))?;
    let bytes = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(OpenedDevice {
        kind: WorkerDevice::Cuda { index },
        device,
        name,
        total_memory: bytes(total),
        free_memory: bytes(free),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(index: usize) -> Result<OpenedDevice, String> {
    Err(format!(
        "device cuda:{index}: this tuna binary was built without CUDA support (the `cuda` \
         feature; build it with deploy/cuda/build.sh); run the worker with --device cpu"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_devices_the_engine_can_open_are_accepted() {
        let cpu = WorkerDevice::open("cpu").unwrap();
        assert_eq!(cpu.kind.kind(), "cpu");
        assert!(cpu.device.is_cpu());
        assert_eq!(
            WorkerDevice::parse("cuda:3").ok(),
            Some(WorkerDevice::Cuda { index: 3 })
        );
        for bad in ["tpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = WorkerDevice::open(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        // This machine has no GPU: with or without the feature, cuda is refused by name.
        let e = WorkerDevice::open("cuda").unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("--device cpu"), "{e}");
    }
}
