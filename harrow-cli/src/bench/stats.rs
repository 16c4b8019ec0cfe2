//! Repeated measurements: every figure is the samples of several repetitions, summarised by
//! their median and spread (min–max); ratios are taken between medians.

use serde_json::json;

/// The samples of one figure, in the order they were taken.
#[derive(Clone, Debug, Default)]
pub(super) struct Samples(Vec<f64>);

impl Samples {
    pub(super) fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// Adds all of `other`'s samples.
    pub(super) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the middle two for an even count); 0 without samples.
    pub(super) fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The `q`-quantile (0.5: median, 0.99: p99) by the nearest-rank rule; 0 without samples.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    /// The mean; 0 without samples.
    pub(super) fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    pub(super) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(0.0)
    }

    pub(super) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    /// `{"n", "median", "min", "max", "samples"}`, rounded to 3 decimals.
    pub(super) fn summary(&self) -> serde_json::Value {
        json!({
            "n": self.len(),
            "median": round(self.median()),
            "min": round(self.min()),
            "max": round(self.max()),
            "samples": self.0.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        })
    }
}

/// Rounds to 3 decimals for JSON (a non-finite value becomes 0).
pub(super) fn round(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// The unit of a figure, which decides how it is printed and what "slower" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Ms,
    Us,
    ItemsPerS,
}

impl Unit {
    /// The JSON key suffix: `harrow_ms`, `baseline_items_per_s`, ...
    pub(super) fn key(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Us => "us",
            Unit::ItemsPerS => "items_per_s",
        }
    }

    /// The median with the spread in the same scale: `41.2 µs (39.8–47.1)`.
    pub(super) fn show_spread(self, s: &Samples) -> String {
        let m = s.median();
        let (med, unit) = self.scaled(m, m);
        if s.len() < 2 {
            return format!("{med} {unit}");
        }
        let (lo, _) = self.scaled(s.min(), m);
        let (hi, _) = self.scaled(s.max(), m);
        format!("{med} {unit} ({lo}–{hi})")
    }

    /// `v` as a number in the scale chosen for `reference`, and that scale's unit.
    fn scaled(self, v: f64, reference: f64) -> (String, &'static str) {
        match self {
            Unit::Ms => (format!("{v:.2}"), "ms"),
            Unit::Us => (format!("{v:.1}"), "µs"),
            Unit::ItemsPerS if reference >= 1e6 => (format!("{:.2}", v / 1e6), "M items/s"),
            Unit::ItemsPerS => (format!("{:.1}", v / 1e3), "k items/s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(v: &[f64]) -> Samples {
        let mut s = Samples::default();
        for x in v {
            s.push(*x);
        }
        s
    }

    #[test]
    fn median_min_max() {
        let s = samples(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median(), s.min(), s.max()), (3.0, 1.0, 5.0));
        assert_eq!(samples(&[4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert_eq!(samples(&[]).median(), 0.0);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let s = samples(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(
            (s.quantile(0.5), s.quantile(0.99), s.quantile(1.0)),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(samples(&[7.0]).quantile(0.99), 7.0);
        assert_eq!(samples(&[]).quantile(0.5), 0.0);
    }

    #[test]
    fn spread_is_printed_in_the_medians_scale() {
        let s = samples(&[900e3, 1.2e6, 1.1e6]);
        assert_eq!(
            Unit::ItemsPerS.show_spread(&s),
            "1.10 M items/s (0.90–1.20)"
        );
        assert_eq!(Unit::Us.show_spread(&samples(&[2.0])), "2.0 µs");
    }
}
