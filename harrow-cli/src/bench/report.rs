//! The bench's output: the tables (with each figure's spread) or the JSON.

use std::time::Duration;

use serde_json::json;

use super::Sizes;
use super::backend::Row;
use super::parallel::{ENOUGH_CORES, Parallel};
use super::placement::Placement;
use super::stats::{Samples, Unit, round};

/// Everything one run measured.
pub(super) struct Report {
    pub(super) quick: bool,
    pub(super) sizes: Sizes,
    pub(super) rows: Vec<Row>,
    /// `None` without the subint backend.
    pub(super) parallel: Option<Parallel>,
    /// Whether the subint backend was available, and why not.
    pub(super) subint: Result<(), String>,
    /// The 1-minute load average before and after the run (`None` where unreadable).
    pub(super) load: (Option<f64>, Option<f64>),
    /// How far apart two CPUs were before and after the run.
    pub(super) placement: Placement,
    pub(super) took: Duration,
}

/// The 1-minute load average, from `/proc/loadavg`.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn python_version() -> String {
    #[cfg(feature = "subint")]
    if harrow::subint_status().is_ok() {
        return harrow::backends::subint::python_version().to_owned();
    }
    option_env!("HARROW_PYTHON_VERSION")
        .unwrap_or("none")
        .to_owned()
}

fn show_load(l: Option<f64>) -> String {
    l.map_or("?".into(), |l| format!("{l:.2}"))
}

/// The spread of `2 × T1 / T2` over rounds, as `(1.71–1.93)`.
fn range(s: &Samples) -> String {
    if s.len() < 2 {
        String::new()
    } else {
        format!("({:.2}–{:.2})", s.min(), s.max())
    }
}

impl Report {
    /// The warning when the parallel measurement got fewer than [`ENOUGH_CORES`] cores.
    fn low_cores(&self) -> Option<String> {
        let p = self.parallel.as_ref()?;
        let (cores, from) = p.cores_given()?;
        (cores < ENOUGH_CORES).then(|| {
            format!(
                "the two parallel workers got only {cores:.2} cores ({from}'s CPU time / wall \
                 time during T2, median over rounds; {} cpus, load average {} before the run): \
                 the machine was busy with other work, so the speedups above say as much about \
                 its load as about the runtime (a speedup near 2.0 needs about 2 cores); compare \
                 them with the multiprocessing baseline, not with 2.0",
                cpus(),
                show_load(self.load.0)
            )
        })
    }

    pub(super) fn print(&self) {
        let s = self.sizes;
        println!(
            "harrow bench ({}; {} repetitions; {} cpus; load average {} before, {} after; Python {}; {:.0} s)",
            if self.quick {
                "--quick: smoke sizes, rough figures"
            } else {
                "default sizes"
            },
            s.reps,
            cpus(),
            show_load(self.load.0),
            show_load(self.load.1),
            python_version(),
            self.took.as_secs_f64()
        );
        println!("{}", self.placement.line());
        println!(
            "each figure: median (min–max) over its repetitions, each alternating with its baseline's; \
             ratio = median / baseline median, how many times slower than the baseline (for items/s: baseline / harrow)"
        );
        println!(
            "RPC round trips: each repetition is the faster of two batches on each side \
             (taking turns: harrow, baseline free, harrow, baseline held on one CPU)"
        );
        println!();
        println!(
            "{:<8} {:<24} {:>30}  {:<53} {:>30} {:>8}",
            "backend", "measure", "harrow", "baseline (same run)", "baseline", "ratio"
        );
        for r in &self.rows {
            println!(
                "{:<8} {:<24} {:>30}  {:<53} {:>30} {:>7.2}x{}",
                r.backend,
                r.label,
                r.unit.show_spread(&r.harrow),
                r.baseline_label,
                r.unit.show_spread(&r.baseline),
                r.ratio(),
                if r.note.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", r.note)
                }
            );
            if r.harrow_lat.len() > 0 {
                println!(
                    "{:<8} {:<24} {:>30}  {:<53} {:>30} {:>7.2}x",
                    "",
                    "  p50 / p99 of one",
                    percentiles(&r.harrow_lat),
                    "",
                    percentiles(&r.baseline_lat),
                    r.harrow_lat.quantile(0.99) / r.baseline_lat.quantile(0.99)
                );
            }
        }
        if let Err(why) = &self.subint {
            println!("subint   (skipped: {why})");
        }
        if let Some((call, apply)) = self.parallel.as_ref().and_then(|p| p.calls.as_ref()) {
            println!(
                "{:<8} {:<24} {:>30}  {:<53} {:>30}   subint {:.1}x faster",
                "subint",
                "Python call round trip",
                Unit::Us.show_spread(call),
                "multiprocessing Pool.apply",
                Unit::Us.show_spread(apply),
                apply.median() / call.median()
            );
        }
        // The Python process backend's call round trip beside the same multiprocessing figure.
        let py_process = self
            .rows
            .iter()
            .find(|r| r.backend == "pyprocess" && r.key == "rpc_round_trip");
        if let (Some((_, apply)), Some(row)) = (
            self.parallel.as_ref().and_then(|p| p.calls.as_ref()),
            py_process,
        ) {
            println!(
                "{:<8} {:<24} {:>30}  {:<53} {:>30}   pyprocess {:.1}x faster",
                "pyprocess",
                "Python call round trip",
                Unit::Us.show_spread(&row.harrow),
                "multiprocessing Pool.apply",
                Unit::Us.show_spread(apply),
                apply.median() / row.harrow.median()
            );
        }
        let Some(p) = &self.parallel else {
            return;
        };
        println!();
        println!(
            "parallel Python: pure-Python sum of i*i for i in range({}); T1 = one job on one worker, T2 = two jobs on two workers at once;",
            p.n
        );
        println!(
            "speedup = 2 × median T1 / median T2 (2.0 = perfectly parallel, 1.0 = serialised), with the per-round range; \
             cores = CPU time / wall time during T1 and during T2 (at most 1 and 2); baseline: multiprocessing.Pool(2), rounds alternating with the subint modes"
        );
        println!(
            "{:<38} {:>26} {:>26} {:>20} {:>20} {:>18}",
            "mode", "T1", "T2", "speedup", "cores T1 / T2", "vs multiprocessing"
        );
        let mp = p.mode("multiprocessing").map(|m| m.speedup());
        for m in &p.modes {
            let sp = m.speedup();
            println!(
                "{:<38} {:>26} {:>26} {:>20} {:>20} {:>18}",
                m.label,
                Unit::Ms.show_spread(&m.t1),
                Unit::Ms.show_spread(&m.t2),
                format!("{sp:.2}x {}", range(&m.speedups)),
                format!("{:.2} / {:.2}", m.cores_t1.median(), m.cores.median()),
                mp.map_or("-".into(), |mp| format!("{:.2}x", sp / mp))
            );
        }
        if let Some(why) = &p.mp_skipped {
            println!("multiprocessing: skipped: {why}");
        }
        if let Some(warning) = self.low_cores() {
            println!();
            println!("WARNING: {warning}");
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut backends = serde_json::Map::new();
        for r in &self.rows {
            let entry = backends
                .entry(r.backend)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(o) = entry.as_object_mut() {
                o.insert(r.key.into(), row_json(r));
            }
        }
        if let Err(why) = &self.subint {
            backends.insert("subint".into(), json!({ "unavailable": why }));
        }
        let (parallel, calls) = match &self.parallel {
            Some(p) => (parallel_json(p), calls_json(p)),
            None => {
                let why = json!({ "skipped": "needs the subint backend" });
                (why.clone(), why)
            }
        };
        let cores = self.parallel.as_ref().and_then(Parallel::cores_given);
        json!({
            "quick": self.quick,
            "repetitions": self.sizes.reps,
            "rpc_round_trips_per_repetition": (self.sizes.rpc_round_trips / self.sizes.reps).max(1),
            "rpc_batches_per_repetition": "two on each side, the faster counted, taking turns: harrow, the baseline free, harrow, the baseline held on one CPU; the p50 and p99 are those of the counted batches",
            "round_trips_per_repetition": (self.sizes.round_trips / self.sizes.reps).max(1),
            "cpus": cpus(),
            "load_average_before": self.load.0,
            "load_average_after": self.load.1,
            "cpu_placement": self.placement.to_json(),
            "python": python_version(),
            "took_s": round(self.took.as_secs_f64()),
            "figures": "every figure is the median of its samples; its *_samples object has n, median, min, max and the samples in the order taken",
            "ratio_definition": "how many times slower than the baseline, from the medians: harrow time / baseline time, or baseline items_per_s / harrow items_per_s",
            "backends": backends,
            "parallel_python": parallel,
            "cores_during_parallel": cores.map(|(c, from)| json!({ "cores": round(c), "from": from })),
            "low_cores_warning": self.low_cores(),
            "python_call_round_trip": calls,
        })
    }
}

/// `p50 / p99` of single round trips, in µs.
fn percentiles(s: &Samples) -> String {
    format!("{:.1} / {:.1} µs", s.quantile(0.5), s.quantile(0.99))
}

fn row_json(r: &Row) -> serde_json::Value {
    let u = r.unit.key();
    let mut m = serde_json::Map::new();
    m.insert(format!("harrow_{u}"), round(r.harrow.median()).into());
    m.insert(format!("harrow_{u}_samples"), r.harrow.summary());
    if !r.note.is_empty() {
        m.insert("outcome".into(), r.note.clone().into());
    }
    m.insert("baseline".into(), r.baseline_label.clone().into());
    m.insert(format!("baseline_{u}"), round(r.baseline.median()).into());
    m.insert(format!("baseline_{u}_samples"), r.baseline.summary());
    m.insert("ratio_vs_baseline".into(), round(r.ratio()).into());
    if r.harrow_lat.len() > 0 {
        for (who, lat) in [("harrow", &r.harrow_lat), ("baseline", &r.baseline_lat)] {
            m.insert(format!("{who}_{u}_p50"), round(lat.quantile(0.5)).into());
            m.insert(format!("{who}_{u}_p99"), round(lat.quantile(0.99)).into());
        }
        m.insert(
            "p99_ratio_vs_baseline".into(),
            round(r.harrow_lat.quantile(0.99) / r.baseline_lat.quantile(0.99)).into(),
        );
    }
    serde_json::Value::Object(m)
}

fn parallel_json(p: &Parallel) -> serde_json::Value {
    let mut par = serde_json::Map::new();
    par.insert(
        "job".into(),
        json!(format!("pure-Python sum of i*i for i in range({})", p.n)),
    );
    par.insert("n".into(), p.n.into());
    par.insert(
        "speedup_definition".into(),
        json!("2 * median t1 / median t2: t1 = one job on one worker, t2 = two jobs on two workers at once; 2.0 = perfectly parallel, 1.0 = serialised; speedup_samples: 2 * t1 / t2 of each round"),
    );
    par.insert(
        "cores_definition".into(),
        json!("CPU time / wall time during t1 and during t2 (this process's for subint, the pool workers' for multiprocessing): at most 1 and 2; fewer than 1.8 during t2 flags the run (low_cores_warning)"),
    );
    let mp = p.mode("multiprocessing").map(|m| m.speedup());
    for m in &p.modes {
        let sp = m.speedup();
        let mut o = json!({
            "t1_ms": round(m.t1.median()),
            "t2_ms": round(m.t2.median()),
            "speedup": round(sp),
            "cores_during_t1": round(m.cores_t1.median()),
            "cores_during_t2": round(m.cores.median()),
            "t1_ms_samples": m.t1.summary(),
            "t2_ms_samples": m.t2.summary(),
            "speedup_samples": m.speedups.summary(),
            "cores_during_t1_samples": m.cores_t1.summary(),
            "cores_during_t2_samples": m.cores.summary(),
        });
        if m.key != "multiprocessing" {
            o["speedup_vs_multiprocessing"] = json!(mp.map(|mp| round(sp / mp)));
        }
        par.insert(m.key.into(), o);
    }
    if let Some(why) = &p.mp_skipped {
        par.insert("multiprocessing".into(), json!({ "skipped": why }));
    }
    serde_json::Value::Object(par)
}

fn calls_json(p: &Parallel) -> serde_json::Value {
    match &p.calls {
        Some((call, apply)) => json!({
            "subint_call_us": round(call.median()),
            "subint_call_us_samples": call.summary(),
            "multiprocessing_pool_apply_us": round(apply.median()),
            "multiprocessing_pool_apply_us_samples": apply.summary(),
            "subint_faster_by": round(apply.median() / call.median()),
        }),
        None => json!({ "skipped": "needs the subint backend and Python's multiprocessing" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::parallel::Mode;

    fn report(mp_cores: f64) -> Report {
        let mut mp = Mode::new("multiprocessing", "multiprocessing.Pool(2)");
        mp.cores.push(mp_cores);
        Report {
            quick: true,
            sizes: Sizes::new(true),
            rows: Vec::new(),
            parallel: Some(Parallel {
                n: 1,
                modes: vec![mp],
                mp_skipped: None,
                calls: None,
            }),
            subint: Ok(()),
            load: (Some(3.0), None),
            placement: Placement::default(),
            took: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_run_with_fewer_than_enough_cores_is_flagged() {
        let low = report(1.3);
        let warning = low.low_cores().expect("1.3 cores is flagged");
        assert!(warning.contains("1.30 cores"), "{warning}");
        assert_eq!(low.to_json()["low_cores_warning"], json!(warning));
        assert_eq!(report(1.9).low_cores(), None);
        assert_eq!(report(1.9).to_json()["low_cores_warning"], json!(null));
    }
}
