//! glibc's malloc settings for the memory a binary allocates outside Rust: LibTorch's tensors
//! on the `tch` backend. (The binaries allocate Rust memory with mimalloc.)
//!
//! By default glibc maps every allocation above a threshold (128 KiB, raised as blocks are
//! freed, to at most 32 MiB) with its own `mmap` and unmaps it on free, and returns free memory
//! at the top of its heap once 128 KiB or more are free. A training step allocates and frees the
//! same large tensors every step, so each time their pages are mapped again and faulted in one
//! by one: on tch the small CNN's step at K = 2 ran at 859–875 views/s, and at 1,437–1,558 with
//! these settings (the same binary, `GLIBC_TUNABLES`; `docs/results.md`).

/// Largest block glibc serves from its heap rather than with its own `mmap`: above the 33.5 MB
/// activations of the small CNN's first block at batch 256 and those of ResNet-18 at 128. A
/// glibc that refuses it (mallopt(3) documents 32 MiB as the maximum) gets
/// [`MMAP_THRESHOLD_FALLBACK`].
pub const MMAP_THRESHOLD: usize = 256 << 20;

/// The mmap threshold set when glibc refuses [`MMAP_THRESHOLD`].
pub const MMAP_THRESHOLD_FALLBACK: usize = 32 << 20;

/// Free memory at the top of the heap that glibc keeps rather than returning it to the system.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Sets glibc's trim threshold to [`TRIM_THRESHOLD`] and its mmap threshold to
/// [`MMAP_THRESHOLD`] (or [`MMAP_THRESHOLD_FALLBACK`]), so that freed tensors are reused from
/// the heap instead of being unmapped. Threads other than the first allocate from arenas whose
/// heaps hold at most 64 MiB, so there larger blocks are still mapped one by one.
///
/// Call it once, at the very start of a binary, before it starts other threads: glibc marks
/// `mallopt` MT-Unsafe (it writes settings other threads read without a lock). A library should
/// leave the choice to its binary. The cost is memory: up to [`TRIM_THRESHOLD`] of freed memory
/// stays with the process.
///
/// Returns whether both settings took effect; `false` on targets other than Linux with glibc,
/// where it does nothing.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        let mmap = set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            || set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK);
        trim && mmap
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// `mallopt(parameter, value)`; whether glibc accepted it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(parameter: libc::c_int, value: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(value) else {
        return false;
    };
    // SAFETY: `mallopt` takes a parameter number and an int and changes only malloc's settings,
    // under its arena lock; other threads' reads of those settings are the reason glibc marks it
    // MT-Unsafe, and `keep_freed_memory` is documented to run before other threads start.
    unsafe { libc::mallopt(parameter, value) == 1 }
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// Set in the child process that runs [`settings_in_own_process`] for real.
    const CHILD: &str = "MEMBANK_MALLOC_TEST_CHILD";

    /// Whether glibc serves a fresh 40 MiB block with its own `mmap`: its count of mapped blocks
    /// rises while the block is held. Single-threaded (the child process), nothing else moves it.
    fn forty_mib_is_mapped() -> bool {
        // SAFETY: `mallinfo2` only reads malloc's statistics; the block is freed once.
        let (before, during) = unsafe {
            let before = libc::mallinfo2().hblks;
            // `black_box`: a block allocated and freed unused may be optimised away.
            let block = std::hint::black_box(libc::malloc(40 << 20));
            assert!(!block.is_null());
            let during = libc::mallinfo2().hblks;
            libc::free(block);
            (before, during)
        };
        during == before + 1
    }

    /// The check itself, in a process of its own: with a 1 MiB threshold (the control) glibc
    /// maps a 40 MiB block; after `keep_freed_memory` the block comes from the heap. In the
    /// parent test process (several test threads, settings shared by all) it does nothing:
    /// [`large_blocks_come_from_the_heap`] runs it in a child.
    #[test]
    fn settings_in_own_process() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert!(set(libc::M_MMAP_THRESHOLD, 1 << 20));
        assert!(forty_mib_is_mapped(), "control: 1 MiB threshold");
        assert!(keep_freed_memory());
        assert!(!forty_mib_is_mapped(), "after keep_freed_memory");
        println!("malloc settings checked");
    }

    /// Runs [`settings_in_own_process`] in a child process with one test thread, so that no
    /// other test allocates meanwhile or sees the settings.
    #[test]
    fn large_blocks_come_from_the_heap() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["malloc::tests::settings_in_own_process", "--exact"])
            .args(["--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("malloc settings checked"),
            "child: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
