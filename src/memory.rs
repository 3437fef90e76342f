//! Keeping the process's resident memory near what it uses (glibc's allocator only).
//!
//! glibc gives every thread that allocates under contention an arena of its own (up to 8 per
//! core) and keeps freed memory in them; a batch's buffers are freed on one thread after being
//! built on another, so resident memory grew to about twice the heap in use (heaptrack of
//! `carflow demo`: peak heap 99 MB, RSS 235-260 MB). Two arenas and a return of free memory to
//! the system every few seconds keep RSS near the heap. `MALLOC_ARENA_MAX` set in the
//! environment wins over the arena count here.

use std::time::Duration;

/// How often free memory is given back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Limit the allocator's arenas and start giving free memory back periodically.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; called before other threads.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        let _ = std::thread::Builder::new()
            .name("carflow-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: malloc_trim only returns free pages of the heap to the system.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
    }
}
