//! Process-wide allocator settings for long-lived servers.

/// Makes freed large allocations go back to the operating system at once.
///
/// glibc serves an allocation of 128 KiB or more with its own `mmap` until such a block is
/// freed; then it raises that threshold (up to 32 MiB) and later large blocks come from its
/// heaps, which keep the memory after `free`. In the coordinator that turned every 19 MiB
/// argon2 verification of a login flood, and every upload body, into memory held for good:
/// peak RSS 773 MiB against 72 MiB with the threshold fixed (`coordinator_load`, 32 workers,
/// 1,000 bad logins). Fixing the threshold keeps large blocks on `mmap`, unmapped on `free`.
/// Not for training processes, whose per-step buffers would then cost a map and page faults
/// each step. A no-op where the C library is not glibc.
pub fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes a tuning parameter of the allocator; it is safe to
        // call at any time, and 128 KiB is glibc's own default threshold.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if ok != 1 {
            tracing::warn!("could not fix the allocator's mmap threshold; RSS may stay high");
        }
    }
}
