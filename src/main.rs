//! `coffer`: one binary for the host and its tools. See `coffer --help`.

use clap::Parser;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        pin_malloc_tunables();
        coffer::memory::set_heap_release(trim_heap);
    }
    let cli = coffer::cli::Cli::parse();
    if let Err(error) = coffer::cli::run(cli) {
        eprintln!("coffer: error: {error:#}");
        std::process::exit(1);
    }
}

/// glibc's `malloc_trim(0)`: gives the free pages of every arena back to the
/// system (glibc returns freed memory by itself only from the top of a heap).
/// The library forbids `unsafe`; this one foreign call is registered from
/// here (see `coffer::memory`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and has no caller-side
    // invariants; glibc serialises it with every other allocator call.
    unsafe { malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

/// Two glibc malloc settings, measured here:
///
/// - glibc raises its trim threshold after large blocks are freed, and sled
///   frees large buffers every time a tenant database is closed; the freed
///   memory then stays in the process. With 300 tenants cycling through a pool
///   of 50 open databases: 680 MiB RSS, against 24 MiB with the threshold fixed
///   (which turns the dynamic adjustment off).
/// - glibc gives threads up to 8 arenas per core, and sled's pages are
///   allocated in the arena of whichever thread reads them: an export's
///   reader thread left a second copy of the pages' high-water mark in its own
///   arena (a 300 MB tenant: +80 MiB per export; +4 MiB with one arena per core).
///
/// glibc reads its tunables only when a process starts, so `serve` re-executes
/// itself once with them set; an operator's own `GLIBC_TUNABLES` setting wins.
fn pin_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.trim_threshold") || current.contains("glibc.malloc.arena_max")
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ours = format!("glibc.malloc.trim_threshold=131072:glibc.malloc.arena_max={cores}");
    let value = if current.is_empty() {
        ours
    } else {
        format!("{current}:{ours}")
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", value)
        .exec();
    eprintln!(
        "coffer: warning: could not re-execute with fixed malloc settings ({error}); continuing"
    );
}
