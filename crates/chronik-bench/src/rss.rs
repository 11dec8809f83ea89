//! Peak resident memory of one operation, from Linux's `/proc/self`: the peak (`VmHWM`) is
//! reset to the current resident size before the operation (`echo 5 > clear_refs`), read
//! after it, and the growth over the starting size is what the operation held at its worst.

use std::future::Future;

/// A resident-set size in KiB from `/proc/self/status` (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `op` and returns its result with the peak resident growth in MiB while it ran
/// (`None` where the kernel does not offer the counters).
pub(crate) async fn peak_growth<T, Fut: Future<Output = T>>(op: Fut) -> (T, Option<f64>) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS");
    let out = op.await;
    let peak = status_kib("VmHWM");
    let growth = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b) as f64 / 1024.0),
        _ => None,
    };
    (out, growth)
}
