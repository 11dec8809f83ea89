//! Measuring: run an operation from N concurrent workers for a while, record latencies.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long and how hard to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Unmeasured run-in.
    pub(crate) warmup: Duration,
    /// Measured time.
    pub(crate) measure: Duration,
}

/// What one measured run did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stats {
    /// Completed operations.
    pub(crate) ops: u64,
    /// Items processed (events appended, loaded, projected).
    pub(crate) items: u64,
    /// Measured wall time in seconds.
    pub(crate) seconds: f64,
    /// Operations per second.
    pub(crate) ops_per_sec: f64,
    /// Items per second.
    pub(crate) items_per_sec: f64,
    /// Latency percentiles in milliseconds.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Slowest.
    pub(crate) max_ms: f64,
}

pub(crate) fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// One boxed operation: `(worker, iteration) -> items processed`.
pub(crate) type Op = Arc<
    dyn Fn(usize, u64) -> futures::future::BoxFuture<'static, anyhow::Result<u64>> + Send + Sync,
>;

/// Runs every variant for `rounds` short rounds, alternating (A B C A B C ...), and merges
/// each variant's samples. Noise that drifts during the run (another process, autovacuum,
/// a checkpoint) then hits every variant alike instead of whichever ran at that moment.
pub(crate) async fn interleaved(
    workers: usize,
    budget: Budget,
    rounds: u32,
    variants: &[(&str, Op)],
) -> anyhow::Result<Vec<(String, Stats)>> {
    let rounds = rounds.max(1);
    let slice = Budget {
        warmup: budget.warmup / rounds,
        measure: budget.measure / rounds,
    };
    let mut acc: Vec<(Vec<u64>, u64, Duration)> =
        vec![(Vec::new(), 0, Duration::ZERO); variants.len()];
    for _ in 0..rounds {
        for (i, (_, op)) in variants.iter().enumerate() {
            let op = op.clone();
            let (lat, items, elapsed) = samples(workers, slice, move |w, n| op(w, n)).await?;
            acc[i].0.extend(lat);
            acc[i].1 += items;
            acc[i].2 += elapsed;
        }
    }
    Ok(variants
        .iter()
        .zip(acc)
        .map(|((name, _), (lat, items, elapsed))| ((*name).to_owned(), stats(lat, items, elapsed)))
        .collect())
}

pub(crate) fn stats(mut lat_us: Vec<u64>, items: u64, elapsed: Duration) -> Stats {
    lat_us.sort_unstable();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let ops = lat_us.len() as u64;
    Stats {
        ops,
        items,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        items_per_sec: items as f64 / seconds,
        p50_ms: percentile(&lat_us, 50.0),
        p90_ms: percentile(&lat_us, 90.0),
        p99_ms: percentile(&lat_us, 99.0),
        max_ms: lat_us.last().map_or(0.0, |m| *m as f64 / 1000.0),
    }
}

/// Runs `op(worker, iteration)` from `workers` tasks; each call returns how many items it
/// processed. Errors abort the run: a benchmark that fails is not a measurement.
pub(crate) async fn run<F, Fut>(workers: usize, budget: Budget, op: F) -> anyhow::Result<Stats>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let (lat, items, elapsed) = samples(workers, budget, op).await?;
    Ok(stats(lat, items, elapsed))
}

/// Raw latencies (µs), items and measured time of one run.
async fn samples<F, Fut>(
    workers: usize,
    budget: Budget,
    op: F,
) -> anyhow::Result<(Vec<u64>, u64, Duration)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (op, measuring, stop) = (op.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut items = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let n = op(w, i).await?;
                i += 1;
                // Operations that never pend (the in-memory store) would otherwise starve
                // the timer task; every variant pays the same tiny cost.
                tokio::task::yield_now().await;
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_micros() as u64);
                    items += n;
                }
            }
            anyhow::Ok((lat, items))
        }));
    }
    tokio::time::sleep(budget.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(budget.measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut items = 0;
    for t in tasks {
        let (lat, n) = t.await??;
        all.extend(lat);
        items += n;
    }
    Ok((all, items, elapsed))
}

/// Runs `op` `times` times sequentially and measures each call (for long single operations
/// such as a 1M-event catch-up).
pub(crate) async fn repeat<F, Fut>(times: usize, op: F) -> anyhow::Result<Stats>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let mut lat = Vec::with_capacity(times);
    let mut items = 0;
    let start = Instant::now();
    for i in 0..times {
        let t = Instant::now();
        items += op(i as u64).await?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    Ok(stats(lat, items, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let s = stats(vec![3000, 1000, 2000], 30, Duration::from_secs(1));
        assert_eq!((s.ops, s.items, s.p50_ms, s.max_ms), (3, 30, 2.0, 3.0));
    }
}
