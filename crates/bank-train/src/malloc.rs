//! glibc's malloc settings for the memory a binary allocates outside Rust: LibTorch's tensors
//! on the `tch` backend. (The binaries allocate Rust memory with mimalloc.)
//!
//! By default glibc maps every allocation above a threshold (128 KiB, raised as blocks are
//! freed, to at most 32 MiB) with its own `mmap` and unmaps it on free, and returns free memory at the top of
//! its heap once 128 KiB or more are free. A training step allocates and frees the same large
//! tensors every step, so each time their pages are mapped again and faulted in one by one: on
//! tch the small CNN's step at K = 2 ran at 860–875 views/s, and at 1,437–1,558 with the
//! settings below (the same binary, `GLIBC_TUNABLES`; `docs/results.md`).

/// Largest block glibc serves from its heap rather than with its own `mmap`: above the 33.5 MB
/// activations of the small CNN's first block at batch 256 and those of ResNet-18 at 128.
pub const MMAP_THRESHOLD: usize = 256 << 20;

/// Free memory at the top of the heap that glibc keeps rather than returning it to the system.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Sets glibc's mmap threshold to [`MMAP_THRESHOLD`] and its trim threshold to
/// [`TRIM_THRESHOLD`], so that freed tensors up to 256 MiB are reused from the heap. Call it once,
/// at the start of a binary; a library should leave the choice to its binary. The cost is
/// memory: up to [`TRIM_THRESHOLD`] of freed memory stays with the process.
///
/// Returns whether both settings took effect; `false` on targets other than Linux with glibc,
/// where it does nothing.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) && set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(parameter: libc::c_int, value: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(value) else {
        return false;
    };
    // SAFETY: `mallopt` takes a parameter number and an int and only changes malloc's settings;
    // glibc documents it as safe to call at any time (it takes the arena lock).
    unsafe { libc::mallopt(parameter, value) == 1 }
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// Whether glibc serves a fresh 40 MiB block with its own `mmap` (its count of mapped
    /// blocks rises while the block is held). Other tests allocate on other threads, so a
    /// count that moved for another reason is retried.
    fn forty_mib_is_mapped() -> bool {
        let mut seen = Vec::new();
        for _ in 0..5 {
            // SAFETY: `mallinfo2` only reads malloc's statistics; the block is freed once.
            let (before, during, after) = unsafe {
                let before = libc::mallinfo2().hblks;
                // `black_box`: a block allocated and freed unused may be optimised away.
                let block = std::hint::black_box(libc::malloc(40 << 20));
                assert!(!block.is_null());
                let during = libc::mallinfo2().hblks;
                libc::free(block);
                (before, during, libc::mallinfo2().hblks)
            };
            if before == after {
                return during == before + 1;
            }
            seen.push((before, during, after));
        }
        panic!("the mapped-block count kept moving: {seen:?}");
    }

    /// With glibc's default-sized threshold a 40 MiB block is mapped; after
    /// `keep_freed_memory` it comes from the heap.
    #[test]
    fn large_blocks_come_from_the_heap() {
        assert!(set(libc::M_MMAP_THRESHOLD, 1 << 20));
        assert!(forty_mib_is_mapped(), "control: 1 MiB threshold");
        assert!(keep_freed_memory());
        assert!(!forty_mib_is_mapped());
    }
}
