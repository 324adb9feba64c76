//! The host's memory as the system sees it: its resident size, the memory the
//! machine (or its cgroup) gives it, and the one way to hand freed heap back
//! to the system. A leaf; `storage` asks it after long jobs (see
//! `Storage::after_whole_read`).
//!
//! glibc returns freed memory to the system only from the top of a heap, so
//! the pages a closed sled database freed stay resident until
//! `malloc_trim` walks the arenas. That call is foreign code, and this crate
//! forbids `unsafe`: the binary (`src/main.rs`) registers it once at start
//! with [`set_heap_release`], and a process that registered nothing (the
//! tests' and benches' own storage) simply keeps what it freed.

use std::sync::OnceLock;

/// The process's resident set size (`VmRSS`), if the system tells it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// The memory this process may use: the machine's (`MemTotal`), or its
/// cgroup's limit (`memory.max`, cgroup v2) when that is lower.
pub fn available_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| kib_field(&text, "MemTotal:"));
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (total, limit) {
        (Some(total), Some(limit)) => Some(total.min(limit)),
        (total, limit) => total.or(limit),
    }
}

/// A `Name:   1234 kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let value = text.lines().find_map(|line| line.strip_prefix(name))?;
    let kib = value
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

static HEAP_RELEASE: OnceLock<fn() -> bool> = OnceLock::new();

/// Registers the call that gives freed heap back to the system (glibc's
/// `malloc_trim(0)` in the binary). The first registration stays.
pub fn set_heap_release(release: fn() -> bool) {
    let _ = HEAP_RELEASE.set(release);
}

/// Asks the allocator to give the memory it holds free back to the system;
/// whether it said it did (false when nothing is registered). It walks and
/// locks every arena in turn: call it after a burst, not on a hot path.
pub fn release_free_heap() -> bool {
    HEAP_RELEASE.get().is_some_and(|release| release())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_bytes_and_malformed_ones_are_none() {
        let status = "Name:\tcoffer\nVmPeak:\t  20480 kB\nVmRSS:\t   1536 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1536 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(kib_field("VmRSS:\t12 MB\n", "VmRSS:"), None);
        assert_eq!(kib_field("VmRSS:\tlots kB\n", "VmRSS:"), None);
    }

    #[test]
    fn this_process_has_a_resident_size_within_the_machine_memory() {
        let resident = resident_bytes().expect("Linux reports VmRSS");
        let available = available_bytes().expect("Linux reports MemTotal");
        assert!(
            resident > 0 && resident < available,
            "{resident} of {available}"
        );
    }
}
