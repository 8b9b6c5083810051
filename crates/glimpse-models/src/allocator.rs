//! Allocator settings for tensor work.
//!
//! candle allocates a fresh buffer for every intermediate tensor and frees it soon
//! after. With glibc's defaults, buffers above a sliding threshold (128 KiB at start)
//! are `mmap`ed and `munmap`ed one by one, and freed memory at the top of the heap is
//! given back after 128 KiB, so each training step or forward pass faults in and zeroes
//! the same pages again: on the synthetic-world ViT, page faults and page clearing were
//! a quarter of a training step's profile. Keeping buffers up to 32 MiB on the heap and
//! not trimming it below 1 GiB of free space doubles training throughput there
//! (39 → 86 samples/s). Peak memory is not raised: memory is reused, not added.

/// glibc's `mallopt` parameters.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_MMAP_THRESHOLD: c_int = -3;

    /// glibc's `struct mallinfo2` (glibc 2.33 and later).
    #[repr(C)]
    #[derive(Default)]
    pub struct Mallinfo2 {
        pub arena: usize,
        pub ordblks: usize,
        pub smblks: usize,
        pub hblks: usize,
        pub hblkhd: usize,
        pub usmblks: usize,
        pub fsmblks: usize,
        pub uordblks: usize,
        pub fordblks: usize,
        pub keepcost: usize,
    }

    extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn mallinfo2() -> Mallinfo2;
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// What the process allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Allocated and not freed: what the program holds (blocks mapped on their own
    /// included).
    pub in_use: usize,
    /// Freed but kept by the allocator for reuse (part of the resident memory until
    /// it is given back).
    pub free: usize,
}

/// The allocator's counts over all its arenas (glibc on Linux; `None` elsewhere).
/// Resident memory that grows while `in_use` stays flat is memory the allocator
/// keeps, not memory the program leaks.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` only reads the allocator's counters and returns them by
        // value in the layout declared above (glibc >= 2.33).
        let m = unsafe { glibc::mallinfo2() };
        Some(HeapStats {
            in_use: m.uordblks + m.hblkhd,
            free: m.fordblks,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Gives the allocator's free memory back to the system (all arenas, whole free
/// pages inside them too). [`tune_for_tensors`] keeps up to 1 GiB of it for the next
/// forward pass; a long-running server calls this now and then so that its resident
/// memory follows what it holds. Returns whether anything was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only returns free pages to the system; it takes the
        // arenas' locks itself.
        unsafe { glibc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Largest block kept on the heap rather than mapped on its own: glibc's ceiling for
/// this setting on 64-bit targets.
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap kept for reuse rather than given back.
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings above to the process allocator; call it once at start, before
/// threads are spawned. Returns whether they were applied (glibc on Linux only;
/// elsewhere the system allocator is left as it is).
pub fn tune_for_tensors() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; both values are within
        // the ranges glibc accepts, and it reports failure by returning 0.
        unsafe {
            glibc::mallopt(glibc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && glibc::mallopt(glibc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::tune_for_tensors());
        let v: Vec<f32> = vec![1.0; 1 << 22]; // 16 MiB: now a heap block
        assert_eq!(v[123], 1.0);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn heap_stats_see_a_block_held_and_freed() {
        let before = super::heap_stats().unwrap();
        let v: Vec<u8> = vec![7; 64 << 20]; // mapped on its own or on the heap
        let held = super::heap_stats().unwrap();
        assert_eq!(v[12345], 7);
        // Other test threads allocate too: compare with a wide margin.
        assert!(
            held.in_use >= before.in_use + (48 << 20),
            "{before:?} -> {held:?}"
        );
        drop(v);
        let after = super::heap_stats().unwrap();
        assert!(
            after.in_use + (48 << 20) <= held.in_use,
            "{held:?} -> {after:?}"
        );
        super::release_free_memory();
    }
}
