//! Peak GPU memory, read from the high-water mark of the stream-ordered allocator's pool that
//! candle allocates from.

use candle_core::{Device, Result};

/// `bytes` in GiB (2^30 bytes), as the benchmarks and records report memory.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Forgets the high-water mark of `device`'s memory pool (no-op on the CPU).
pub fn reset_peak(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    return set_pool_u64(device, Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(())
    }
}

/// Keeps memory freed to `device`'s pool for later allocations instead of handing it back to
/// the driver at every synchronisation (the pool's default): a call that allocates large
/// buffers after a synchronisation then reuses them rather than mapping new pages (about a
/// millisecond per call at the Wan 1.3B shape). No-op on the CPU.
pub fn retain_freed_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    return set_pool_u64(device, Attr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(())
    }
}

/// Bytes at the high-water mark since the last reset (`None` on the CPU).
pub fn peak_bytes(device: &Device) -> Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    return pool_bytes(device, Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(None)
    }
}

/// Bytes in use now, after synchronising (`None` on the CPU).
pub fn used_bytes(device: &Device) -> Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    return pool_bytes(device, Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(None)
    }
}

/// Bytes a new allocation could get on `device` now: free GPU memory plus what the pool holds
/// unused on CUDA, the kernel's `MemAvailable` on Linux for the CPU; `None` where this is not
/// known.
pub fn available_bytes(device: &Device) -> Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, _total) = cuda
                .cuda_stream()
                .context()
                .mem_get_info()
                .map_err(candle_core::Error::wrap)?;
            device.synchronize()?;
            let reserved = pool_u64(device, Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
            let idle =
                reserved.saturating_sub(pool_u64(device, Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?);
            Ok(Some((free as u64).saturating_add(idle)))
        }
        Device::Cpu => Ok(std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_available(&text))),
        _ => Ok(None),
    }
}

/// The process's peak resident memory in bytes (Linux's `VmHWM`), if the system tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// The value of the `NAME: N kB` line starting with `name` in a `/proc` text, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// One byte count of `device`'s pool, after synchronising (`None` off CUDA).
#[cfg(feature = "cuda")]
fn pool_bytes(device: &Device, attribute: Attr) -> Result<Option<u64>> {
    let Device::Cuda(_) = device else {
        return Ok(None);
    };
    device.synchronize()?;
    pool_u64(device, attribute).map(Some)
}

/// A u64 attribute of `device`'s pool (the byte counts and the release threshold), as it
/// stands now.
#[cfg(feature = "cuda")]
fn pool_u64(device: &Device, attribute: Attr) -> Result<u64> {
    let pool = pool(device)?;
    let mut value: u64 = 0;
    // SAFETY: a valid pool; these attributes are u64.
    unsafe { pools::get_attribute(pool, attribute, (&mut value as *mut u64).cast()) }
        .map_err(candle_core::Error::wrap)?;
    Ok(value)
}

/// Sets a u64 attribute of `device`'s pool (no-op off CUDA).
#[cfg(feature = "cuda")]
fn set_pool_u64(device: &Device, attribute: Attr, mut value: u64) -> Result<()> {
    let Device::Cuda(_) = device else {
        return Ok(());
    };
    let pool = pool(device)?;
    // SAFETY: a valid pool; these attributes are u64.
    unsafe { pools::set_attribute(pool, attribute, (&mut value as *mut u64).cast()) }
        .map_err(candle_core::Error::wrap)
}

#[cfg(feature = "cuda")]
use candle_core::cuda_backend::cudarc::driver::{
    result::mem_pool as pools, sys::CUmemPool_attribute as Attr,
};

#[cfg(feature = "cuda")]
fn pool(device: &Device) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::result::device as devices;
    let ordinal = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    let dev = devices::get(ordinal as i32).map_err(candle_core::Error::wrap)?;
    // SAFETY: `dev` comes from `devices::get`.
    unsafe { devices::get_default_mem_pool(dev) }.map_err(candle_core::Error::wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(text), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
