//! Where the model runs and in which dtype: the settings and what they resolve to.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use super::error::{ModelError, Result};

/// Where the model runs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde_with::DeserializeFromStr,
    serde_with::SerializeDisplay,
)]
pub enum DeviceSpec {
    /// CUDA 0 when built with CUDA and a GPU is present, else Metal when built with it, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let ordinal = |rest: &str| -> std::result::Result<usize, String> {
            match rest {
                "" => Ok(0),
                _ => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("bad device ordinal in `{s}`")),
            }
        };
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            _ if s.starts_with("cuda") => Ok(DeviceSpec::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(DeviceSpec::Metal(ordinal(&s[5..])?)),
            _ => Err(format!(
                "unknown device `{s}` (expected auto, cpu, cuda[:N] or metal[:N])"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    pub(super) fn open(self) -> Result<(Device, DeviceSpec)> {
        let device_error = |err: candle_core::Error| ModelError::Device(err.to_string());
        match self {
            // A GPU build on a machine without one still runs, on the CPU.
            DeviceSpec::Auto => [DeviceSpec::Cuda(0), DeviceSpec::Metal(0)]
                .into_iter()
                .find_map(|gpu| gpu.open().ok())
                .map_or(Ok((Device::Cpu, DeviceSpec::Cpu)), Ok),
            DeviceSpec::Cpu => Ok((Device::Cpu, self)),
            DeviceSpec::Cuda(n) => Ok((Device::new_cuda(n).map_err(device_error)?, self)),
            DeviceSpec::Metal(n) => Ok((Device::new_metal(n).map_err(device_error)?, self)),
        }
    }
}

/// Compute dtype of weights and activations.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde_with::DeserializeFromStr,
    serde_with::SerializeDisplay,
)]
pub enum DTypeSpec {
    /// f32 on CPU (candle's CPU half-precision matmuls convert on every call), bf16 on GPUs.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl FromStr for DTypeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSpec::Auto),
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "bf16" | "bfloat16" => Ok(DTypeSpec::Bf16),
            "f16" | "float16" | "half" => Ok(DTypeSpec::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected auto, f32, bf16 or f16)"
            )),
        }
    }
}

impl fmt::Display for DTypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DTypeSpec::Auto => "auto",
            DTypeSpec::F32 => "f32",
            DTypeSpec::Bf16 => "bf16",
            DTypeSpec::F16 => "f16",
        })
    }
}

impl DTypeSpec {
    pub(super) fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeSpec::Auto if device.is_cpu() => DType::F32,
            DTypeSpec::Auto => DType::BF16,
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::Bf16 => DType::BF16,
            DTypeSpec::F16 => DType::F16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_names() {
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("CUDA".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("metal".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bfloat16".parse::<DTypeSpec>(), Ok(DTypeSpec::Bf16));
        assert!("int8".parse::<DTypeSpec>().is_err());
    }
}
