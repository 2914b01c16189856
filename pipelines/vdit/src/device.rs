//! Choosing where tensors live: `cpu`, `cuda` or `cuda:N`.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses a `--device` value and opens the device (on CUDA, with a memory pool that keeps
/// freed memory for reuse, as caching allocators do).
pub fn open_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => bail!("unknown device `{spec}`: use cpu, cuda or cuda:N"),
        },
        None => bail!("unknown device `{spec}`: use cpu, cuda or cuda:N"),
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "device `{spec}` asked for, but this vdit was built without CUDA: rebuild with \
             `cargo build --release --no-default-features --features cuda`, or use --device cpu"
        );
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!(
            "cannot open CUDA device {ordinal}: {} (check the driver and the GPU index)",
            e
        )
    })?;
    vdit_core::memory::retain_freed_memory(&device)?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::open_device;

    #[test]
    fn cpu_opens_and_bad_names_are_rejected() {
        assert!(open_device("cpu").unwrap().is_cpu());
        let err = open_device("tpu").unwrap_err().to_string();
        assert!(err.contains("use cpu, cuda or cuda:N"), "{err}");
        let err = open_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = open_device("cuda").unwrap_err().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
