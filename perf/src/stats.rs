//! Small statistics for noisy timings: median, trimmed mean, quantiles, a
//! bootstrap interval of a median, and the load average to report beside.

/// Median of `v` (NaN for an empty slice).
/// The 1-minute load average (/proc/loadavg), NaN when unreadable: the
/// machine's state beside a figure taken on shared cores.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Linear-interpolated quantile `q` in [0, 1] (NaN for an empty slice).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Mean after dropping the lowest and highest `trim` share (0.1: 10 % each).
pub fn trimmed_mean(v: &[f64], trim: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = ((s.len() as f64) * trim).floor() as usize;
    let kept = &s[k..s.len() - k];
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// A median with its spread: a percentile-bootstrap interval of the median
/// (resampling the values with replacement) and the interquartile range.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MedianCi {
    pub median: f64,
    /// The interval's ends (conf: e.g. 0.95).
    pub lo: f64,
    pub hi: f64,
    /// First and third quartiles of the values themselves.
    pub q1: f64,
    pub q3: f64,
    pub n: usize,
}

/// The median of `v`, a `conf` bootstrap interval of it from `resamples`
/// resamples (a fixed seed: the same values give the same interval), and
/// the quartiles. NaN fields for an empty slice.
pub fn median_ci(v: &[f64], conf: f64, resamples: usize) -> MedianCi {
    let mut out = MedianCi {
        median: median(v),
        lo: f64::NAN,
        hi: f64::NAN,
        q1: quantile(v, 0.25),
        q3: quantile(v, 0.75),
        n: v.len(),
    };
    if v.is_empty() {
        return out;
    }
    // xorshift64*: enough for resampling indices.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut meds = Vec::with_capacity(resamples);
    let mut r = vec![0.0; v.len()];
    for _ in 0..resamples {
        for slot in r.iter_mut() {
            *slot = v[(next() % v.len() as u64) as usize];
        }
        meds.push(median(&r));
    }
    let a = (1.0 - conf) / 2.0;
    out.lo = quantile(&meds, a);
    out.hi = quantile(&meds, 1.0 - a);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_trim() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(trimmed_mean(&[100.0, 1.0, 2.0, 3.0, -50.0], 0.2), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn median_interval() {
        let v: Vec<f64> = (0..101).map(|i| i as f64).collect();
        let m = median_ci(&v, 0.95, 2000);
        assert_eq!(m.median, 50.0);
        assert!(m.lo < 50.0 && m.hi > 50.0 && m.lo > 35.0 && m.hi < 65.0, "{m:?}");
        assert_eq!((m.q1, m.q3), (25.0, 75.0));
        let same = median_ci(&[1.0; 20], 0.95, 100);
        assert_eq!((same.lo, same.hi), (1.0, 1.0));
    }
}
