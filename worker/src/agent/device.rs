//! The device a worker advertises, checked before it registers: a worker must never advertise
//! a device its engine will not train on (the server matches jobs by it).

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

    /// The device this worker can train on, or why it cannot. The engine trains on the CPU
    /// only today (docs/engine-notes.md §1.8): a CUDA worker is refused rather than
    /// advertising a GPU and training on the CPU.
    pub fn check(s: &str) -> Result<Self, AgentError> {
        match Self::parse(s)? {
            WorkerDevice::Cpu => Ok(WorkerDevice::Cpu),
            WorkerDevice::Cuda { index } => Err(AgentError::Config(if cfg!(feature = "cuda") {
                format!(
                    "device cuda:{index}: training on CUDA is not available in this version \
                     (the engine runs on the CPU only, docs/engine-notes.md §1.8); run the \
                     worker with --device cpu"
                )
            } else {
                format!(
                    "device cuda:{index}: this tuna binary was built without CUDA support \
                     (the `cuda` feature); run the worker with --device cpu"
                )
            })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_devices_the_engine_trains_on_are_accepted() {
        assert_eq!(
            WorkerDevice::check("cpu").map(WorkerDevice::kind).ok(),
            Some("cpu")
        );
        assert_eq!(
            WorkerDevice::parse("cuda:3").ok(),
            Some(WorkerDevice::Cuda { index: 3 })
        );
        for bad in ["tpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = WorkerDevice::check(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        let e = WorkerDevice::check("cuda").unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("--device cpu"), "{e}");
    }
}
