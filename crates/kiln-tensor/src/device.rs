//! Where a tensor lives: the host, or one CUDA device by ordinal.
//!
//! `Device` is a plain value (Copy, Eq) so layers and the engine can pass it around and compare
//! it; the state behind a CUDA device (context, stream, allocator, kernel modules, cuBLASLt) is
//! created once per ordinal on first use and kept by the `cuda` module.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU by CUDA ordinal (`cuda:0` is the first).
    Cuda(usize),
}

impl Device {
    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }

    /// Checks that the device can be used: always for the CPU; for CUDA, that kiln was built
    /// with the `cuda` feature, a driver is installed and the ordinal exists. The error is one
    /// line that says which of these failed.
    pub fn check(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(ordinal) => crate::cuda::check(ordinal),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// `cpu`, `cuda` (ordinal 0) or `cuda:N`.
impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        let bad = || format!("unknown device `{s}` (expected cpu, cuda or cuda:N)");
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("CUDA:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
