//! Results: rows of measurements, ratios against the baseline measured in the same run,
//! written as JSON and a Markdown table.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::harness::Stats;

/// One measured variant of one scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Scenario name, e.g. `append-1`.
    pub(crate) scenario: String,
    /// What ran: `chronik`, `raw-guarded`, `raw-plain`, `memory`, ...
    pub(crate) variant: String,
    /// Concurrent workers.
    pub(crate) concurrency: usize,
    /// The measurement.
    pub(crate) stats: Stats,
    /// `variant items/s ÷ baseline items/s`, when this row has a baseline.
    pub(crate) ratio: Option<f64>,
    /// The baseline the ratio is against.
    pub(crate) against: Option<String>,
    /// The target ratio from the issue, when there is one.
    pub(crate) target: Option<f64>,
    /// Peak resident memory growth while it ran, in MiB, when measured.
    pub(crate) peak_rss_mib: Option<f64>,
}

/// Everything one run produced.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// Machine and database facts.
    pub(crate) environment: Vec<(String, String)>,
    /// Measurements in run order.
    pub(crate) rows: Vec<Row>,
    /// Free-form observations (e.g. live latency notes).
    pub(crate) notes: Vec<String>,
    /// Where results are written after every measurement, so an interrupted run keeps
    /// what it measured.
    #[serde(skip)]
    pub(crate) out: Option<std::path::PathBuf>,
}

impl Report {
    pub(crate) fn push(&mut self, scenario: &str, variant: &str, concurrency: usize, stats: Stats) {
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            concurrency,
            stats,
            ratio: None,
            against: None,
            target: None,
            peak_rss_mib: None,
        });
        self.checkpoint();
    }

    /// Like [`Report::push`], with the peak resident memory growth measured around it.
    pub(crate) fn push_with_rss(
        &mut self,
        scenario: &str,
        variant: &str,
        concurrency: usize,
        (stats, rss): (Stats, Option<f64>),
    ) {
        self.push(scenario, variant, concurrency, stats);
        if let Some(row) = self.rows.last_mut() {
            row.peak_rss_mib = rss;
        }
        self.checkpoint();
    }

    /// Writes what was measured so far.
    pub(crate) fn checkpoint(&self) {
        if let Some(dir) = &self.out
            && let Err(e) = self.write(dir)
        {
            eprintln!(
                "chronik-bench: cannot write results to {}: {e}",
                dir.display()
            );
        }
    }

    /// Sets the ratio of (`scenario`, `variant`, `concurrency`) against `baseline`.
    pub(crate) fn ratio(
        &mut self,
        scenario: &str,
        variant: &str,
        baseline: &str,
        concurrency: usize,
        target: Option<f64>,
    ) {
        let base = self
            .rows
            .iter()
            .find(|r| {
                r.scenario == scenario && r.variant == baseline && r.concurrency == concurrency
            })
            .map(|r| r.stats.items_per_sec);
        if let (Some(base), Some(row)) = (
            base,
            self.rows.iter_mut().find(|r| {
                r.scenario == scenario
                    && r.variant == variant
                    && r.concurrency == concurrency
                    && r.against.is_none()
            }),
        ) {
            row.ratio = Some(if base > 0.0 {
                row.stats.items_per_sec / base
            } else {
                0.0
            });
            row.against = Some(baseline.to_owned());
            row.target = target;
        } else if let (Some(base), Some(row)) = (
            base,
            self.rows.iter().find(|r| {
                r.scenario == scenario && r.variant == variant && r.concurrency == concurrency
            }),
        ) {
            // A second ratio for the same row (e.g. against raw-plain as well): add a copy.
            let mut copy = row.clone();
            copy.ratio = Some(if base > 0.0 {
                copy.stats.items_per_sec / base
            } else {
                0.0
            });
            copy.against = Some(baseline.to_owned());
            copy.target = target;
            self.rows.push(copy);
            self.checkpoint();
        }
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.environment {
            let _ = writeln!(s, "- {k}: {v}");
        }
        s.push('\n');
        s.push_str("| scenario | variant | conc | items/s | ops/s | p50 ms | p99 ms | ratio | vs | target |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
        for r in &self.rows {
            let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}"));
            let verdict = match (r.ratio, r.target) {
                (Some(x), Some(t)) if x >= t => format!(">= {t} ok"),
                (Some(_), Some(t)) => format!(">= {t} MISSED"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                r.scenario,
                r.variant,
                r.concurrency,
                r.stats.items_per_sec,
                r.stats.ops_per_sec,
                r.stats.p50_ms,
                r.stats.p99_ms,
                ratio,
                r.against.as_deref().unwrap_or(""),
                verdict
            );
        }
        // One line per measurement (a second ratio copies its row).
        let mut memory: Vec<&Row> = Vec::new();
        for r in self.rows.iter().filter(|r| r.peak_rss_mib.is_some()) {
            if !memory.iter().any(|m| {
                (&m.scenario, &m.variant, m.concurrency) == (&r.scenario, &r.variant, r.concurrency)
            }) {
                memory.push(r);
            }
        }
        if !memory.is_empty() {
            s.push_str("\n| scenario | variant | items | peak RSS growth MiB | bytes per item |\n");
            s.push_str("|---|---|---:|---:|---:|\n");
            for r in memory {
                let mib = r.peak_rss_mib.unwrap_or(0.0);
                let per_run = r.stats.items / r.stats.ops.max(1);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.0} |",
                    r.scenario,
                    r.variant,
                    per_run,
                    mib,
                    mib * 1_048_576.0 / per_run.max(1) as f64
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n- {n}");
        }
        s
    }

    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        Ok(())
    }
}
