//! Maglev table quality: evenness (entries per backend against the average),
//! disruption (share of the table that changes backend when one backend is
//! removed or added, next to the ideal 1/N) and build time, for a grid of
//! table sizes M and backend counts N. Rows serialize to JSON; [`markdown`]
//! renders the table for the benchmark report. Builds with `lb::maglev`.
use std::time::Instant;

use lb::maglev::{diff_by, entries_per_backend, Maglev, MaglevError};
use serde::Serialize;

/// What to measure.
#[derive(Clone, Debug)]
pub struct MaglevReportOptions {
    /// Table sizes M (primes).
    pub sizes: Vec<u32>,
    /// Backend counts N (equal weights).
    pub backends: Vec<usize>,
    /// Removals and additions tried per (M, N); each removes a different
    /// backend / adds a different new one.
    pub trials: usize,
    /// Timed builds per (M, N); the median is reported.
    pub build_reps: usize,
}

impl Default for MaglevReportOptions {
    fn default() -> Self {
        MaglevReportOptions {
            sizes: vec![16381, 65537],
            backends: vec![10, 100, 1000],
            trials: 5,
            build_reps: 9,
        }
    }
}

/// One (M, N) cell of the report. Fractions are of the M table entries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MaglevRow {
    pub size: u32,
    pub backends: usize,
    /// Most entries of any backend, over the average M/N.
    pub max_over_avg: f64,
    /// Fewest entries of any backend, over the average.
    pub min_over_avg: f64,
    /// Mean share of entries that changed backend when one of N was removed.
    pub moved_on_remove: f64,
    pub moved_on_remove_worst: f64,
    /// The removed backend's own share: 1/N.
    pub ideal_remove: f64,
    /// Mean share of entries that changed backend when an (N+1)-th was added.
    pub moved_on_add: f64,
    pub moved_on_add_worst: f64,
    /// The new backend's share: 1/(N+1).
    pub ideal_add: f64,
    /// Median time of one full build of the N-backend table, microseconds.
    pub build_us: f64,
}

fn endpoint(i: usize) -> String {
    format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255)
}

/// Share of slots whose backend name differs between two tables.
fn moved(old: &[u16], old_b: &[(String, u32)], new: &[u16], new_b: &[(String, u32)]) -> f64 {
    let name = |b: &[(String, u32)], i: u16| b[usize::from(i)].0.as_str().to_owned();
    let n = diff_by(old, new, |i| name(old_b, i), |i| name(new_b, i));
    n as f64 / old.len() as f64
}

fn mean_and_max(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    (mean, xs.iter().copied().fold(0.0, f64::max))
}

/// Measures one (M, N) cell.
pub fn measure(
    size: u32,
    n: usize,
    trials: usize,
    build_reps: usize,
) -> Result<MaglevRow, MaglevError> {
    let mg = Maglev::new(size)?;
    let all: Vec<(String, u32)> = (0..n).map(|i| (endpoint(i), 1)).collect();

    let mut out = vec![0u16; size as usize];
    let mut times: Vec<f64> = (0..build_reps.max(1))
        .map(|_| {
            let t = Instant::now();
            mg.build_into(&all, &mut out).map(|()| t.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let table = out;

    let avg = f64::from(size) / n as f64;
    let counts = entries_per_backend(&table, n);
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);

    let trials = trials.max(1);
    let mut removed = Vec::with_capacity(trials);
    let mut added = Vec::with_capacity(trials);
    for k in 0..trials {
        if n > 1 {
            let mut rest = all.clone();
            rest.remove(k * n / trials);
            removed.push(moved(&table, &all, &mg.build(&rest)?, &rest));
        }
        if n < size as usize {
            let mut more = all.clone();
            more.push((format!("10.255.{}.{}:8080", k >> 8, k & 255), 1));
            added.push(moved(&table, &all, &mg.build(&more)?, &more));
        }
    }
    let (moved_on_remove, moved_on_remove_worst) = mean_and_max(&removed);
    let (moved_on_add, moved_on_add_worst) = mean_and_max(&added);
    Ok(MaglevRow {
        size,
        backends: n,
        max_over_avg: f64::from(max) / avg,
        min_over_avg: f64::from(min) / avg,
        moved_on_remove,
        moved_on_remove_worst,
        ideal_remove: 1.0 / n as f64,
        moved_on_add,
        moved_on_add_worst,
        ideal_add: 1.0 / (n + 1) as f64,
        build_us: times[times.len() / 2],
    })
}

/// Every (M, N) cell of `opts`, M-major.
pub fn maglev_report(opts: &MaglevReportOptions) -> Result<Vec<MaglevRow>, MaglevError> {
    let mut rows = Vec::new();
    for &size in &opts.sizes {
        for &n in &opts.backends {
            rows.push(measure(size, n, opts.trials, opts.build_reps)?);
        }
    }
    Ok(rows)
}

/// The rows as a markdown table; disruption columns show the measured share
/// and its ratio to the ideal.
pub fn markdown(rows: &[MaglevRow]) -> String {
    let mut s = String::from(
        "| M | N | max/avg | min/avg | moved on remove (×ideal, worst) | ideal 1/N \
         | moved on add (×ideal, worst) | ideal 1/(N+1) | build |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.4} | {:.4} | {:.2}% ({:.2}×, {:.2}×) | {:.2}% \
             | {:.2}% ({:.2}×, {:.2}×) | {:.2}% | {} |\n",
            r.size,
            r.backends,
            r.max_over_avg,
            r.min_over_avg,
            r.moved_on_remove * 100.0,
            r.moved_on_remove / r.ideal_remove,
            r.moved_on_remove_worst / r.ideal_remove,
            r.ideal_remove * 100.0,
            r.moved_on_add * 100.0,
            r.moved_on_add / r.ideal_add,
            r.moved_on_add_worst / r.ideal_add,
            r.ideal_add * 100.0,
            if r.build_us >= 1000.0 {
                format!("{:.2} ms", r.build_us / 1000.0)
            } else {
                format!("{:.0} µs", r.build_us)
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_case() {
        let opts =
            MaglevReportOptions { sizes: vec![1021], backends: vec![10], trials: 3, build_reps: 3 };
        let rows = maglev_report(&opts).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.size, r.backends), (1021, 10));
        // Exact quotas: 102 or 103 entries each, average 102.1.
        assert!(r.max_over_avg <= 103.0 / 102.1 + 1e-9 && r.min_over_avg >= 102.0 / 102.1 - 1e-9);
        assert!(
            r.moved_on_remove >= 0.9 * r.ideal_remove && r.moved_on_remove <= 2.0 * r.ideal_remove
        );
        assert!(r.moved_on_add >= 0.9 * r.ideal_add && r.moved_on_add <= 2.0 * r.ideal_add);
        assert!(r.build_us > 0.0);
        let md = markdown(&rows);
        assert!(md.lines().count() == 3 && md.contains("| 1021 | 10 |"), "{md}");
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["backends"], 10);
    }
}
