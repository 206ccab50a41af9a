//! Process-wide settings for CPU inference: libtorch's thread count and
//! glibc's malloc thresholds. Both affect every model in the process.

use super::EmbedError;

/// Sets the number of threads that libtorch uses inside one operator (its
/// intra-op pool) for the whole process.
///
/// Call it once before the first forward pass. Without it, libtorch uses its
/// default, which `OMP_NUM_THREADS` overrides. Tokenization runs separately on
/// the rayon global pool of the `tokenizers` crate, sized by
/// `RAYON_NUM_THREADS` and switched off by `TOKENIZERS_PARALLELISM=false`.
pub fn set_threads(threads: i32) -> Result<(), EmbedError> {
    if threads < 1 {
        return Err(EmbedError::InvalidThreadCount(threads));
    }
    tch::set_num_threads(threads);
    Ok(())
}

/// Allocations from this size up get their own `mmap`: 32 MiB, the largest
/// value glibc accepts on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`, mallopt(3)).
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;

/// Free memory at the top of the heap that glibc keeps instead of returning it.
const TRIM_THRESHOLD_BYTES: i32 = 1 << 30;

/// Makes glibc's malloc reuse freed activation buffers instead of returning
/// them to the kernel.
///
/// With the default dynamic thresholds, many activation tensors of a forward
/// pass are fresh `mmap` regions whose pages fault in zeroed on first touch.
/// Fixed thresholds keep buffers below 32 MiB on the heap and keep up to 1 GiB
/// of freed heap memory in the process, so resident memory stays near its peak.
/// On this project's 2-vCPU benchmark machine (docs/benchmarks.md) this
/// made CPU embedding about 5% faster. It does nothing on targets without glibc.
pub fn tune_malloc() -> Result<(), EmbedError> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        set_malloc_option(
            libc::M_MMAP_THRESHOLD,
            "M_MMAP_THRESHOLD",
            MMAP_THRESHOLD_BYTES,
        )?;
        set_malloc_option(
            libc::M_TRIM_THRESHOLD,
            "M_TRIM_THRESHOLD",
            TRIM_THRESHOLD_BYTES,
        )?;
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc_option(option: i32, name: &'static str, value: i32) -> Result<(), EmbedError> {
    // SAFETY: mallopt takes two integers and has no memory-safety preconditions.
    let status = unsafe { libc::mallopt(option, value) };
    if status == 1 {
        Ok(())
    } else {
        Err(EmbedError::MallocOption {
            option: name,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_threads_rejects_zero() {
        assert!(matches!(
            set_threads(0),
            Err(EmbedError::InvalidThreadCount(0))
        ));
    }

    #[test]
    fn tune_malloc_succeeds() {
        tune_malloc().unwrap();
    }
}
