//! The status view as Prometheus text exposition format 0.0.4: every
//! family with its help and type, label values escaped. Pure: the HTTP side
//! is `metrics`.

use std::fmt::{Display, Write as _};

use super::proto::{Histogram, ServiceStatus, WorkerStatus};

/// The text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The slot states `slotman_slots` always has a series for.
const STATES: [&str; 4] = ["starting", "idle", "busy", "draining"];

// ---------------------------------------------------------------------------
// Rendering

/// The status as Prometheus text exposition format (0.0.4). Families are
/// complete and never interleaved; a family without samples (no queue depth
/// known, no memory known) is left out entirely.
pub fn render(status: &ServiceStatus) -> String {
    let service = status.service.as_str();
    let mut out = Families::default();

    out.family(
        "slotman_up",
        "gauge",
        "1 while the slotman manager answers.",
    );
    out.sample("slotman_up", &[("service", service)], 1);

    out.family(
        "slotman_config_reload_failed",
        "gauge",
        "1 when the last reload failed and the previous configuration is still running.",
    );
    out.sample(
        "slotman_config_reload_failed",
        &[("service", service)],
        u8::from(status.reload_error.is_some()),
    );

    let workers = &status.workers;

    out.family(
        "slotman_slots",
        "gauge",
        "Slots of a worker by state (starting, idle, busy, draining).",
    );
    for w in workers {
        let counts = [w.starting, w.idle, w.busy, w.draining];
        for (state, n) in STATES.iter().zip(counts) {
            let [s, wk] = worker_labels(service, w);
            out.sample("slotman_slots", &[s, wk, ("state", state)], n);
        }
    }

    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_slots_min",
            "gauge",
            "The worker's configured min slots.",
        ),
        |w| Some(w.min),
    );
    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_slots_max",
            "gauge",
            "The worker's configured max slots.",
        ),
        |w| Some(w.max),
    );

    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_worker_failed",
            "gauge",
            "1 while the worker is marked failed after repeated slot failures.",
        ),
        |w| Some(u8::from(w.failed)),
    );

    out.family(
        "slotman_worker_health",
        "gauge",
        "1 for the worker's health (ok, degraded: serving but something is wrong, failed: cannot serve), 0 for the others.",
    );
    for w in workers {
        for health in ["ok", "degraded", "failed"] {
            let [s, wk] = worker_labels(service, w);
            out.sample(
                "slotman_worker_health",
                &[s, wk, ("health", health)],
                u8::from(w.health == health),
            );
        }
    }

    out.family(
        "slotman_build_info",
        "gauge",
        "Always 1; the running slotman's version.",
    );
    out.sample(
        "slotman_build_info",
        &[("service", service), ("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    out.family(
        "slotman_jobs_total",
        "counter",
        "Jobs finished by the worker's slots, by registered function and result (complete, fail, exception).",
    );
    for w in workers {
        for f in &w.functions {
            let results = [
                ("complete", f.complete),
                ("fail", f.fail),
                ("exception", f.exception),
            ];
            for (result, n) in results {
                let [s, wk] = worker_labels(service, w);
                let l = [s, wk, ("function", f.name.as_str()), ("result", result)];
                out.sample("slotman_jobs_total", &l, n);
            }
        }
    }

    out.family(
        "slotman_job_duration_seconds",
        "histogram",
        "Job durations as the slots measured them.",
    );
    for w in workers {
        out.histogram(
            "slotman_job_duration_seconds",
            &worker_labels(service, w),
            &w.durations,
        );
    }

    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_slot_restarts_total",
            "counter",
            "Slots that exited unexpectedly and were replaced.",
        ),
        |w| Some(w.restarts),
    );

    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_slot_recycles_total",
            "counter",
            "Slots recycled after workleft jobs or max_lifetime.",
        ),
        |w| Some(w.recycles),
    );

    per_worker(
        &mut out,
        service,
        workers,
        ("slotman_queue_depth", "gauge", "Jobs waiting at the job servers for the worker's functions (only when a job server answered)."),
        |w| w.queued,
    );

    per_worker(
        &mut out,
        service,
        workers,
        (
            "slotman_worker_memory_bytes",
            "gauge",
            "Memory of the worker's slots, summed over the slots whose memory is known.",
        ),
        |w| {
            let known: Vec<u64> = w.slots.iter().filter_map(|s| s.memory_bytes).collect();
            (!known.is_empty()).then(|| known.iter().fold(0u64, |a, b| a.saturating_add(*b)))
        },
    );

    out.finish()
}

/// A family with one sample per worker: `value` of each, none where it is
/// `None`. `family` is (name, type, help).
fn per_worker<V: Display>(
    out: &mut Families,
    service: &str,
    workers: &[WorkerStatus],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&WorkerStatus) -> Option<V>,
) {
    out.family(name, kind, help);
    for w in workers {
        if let Some(v) = value(w) {
            out.sample(name, &worker_labels(service, w), v);
        }
    }
}

/// The labels every per-worker series has.
fn worker_labels<'a>(service: &'a str, w: &'a WorkerStatus) -> [(&'static str, &'a str); 2] {
    [("service", service), ("worker", w.name.as_str())]
}

/// Metric families under construction: a family's header is written only
/// once it has a sample.
#[derive(Default)]
struct Families {
    out: String,
    /// The current family's `# HELP`/`# TYPE` lines, until its first sample.
    pending: Option<String>,
}

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Help texts are ours and have no backslash or newline to escape.
        debug_assert!(!help.contains(['\\', '\n']));
        self.pending = Some(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        if let Some(header) = self.pending.take() {
            self.out.push_str(&header);
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, " {value}");
    }

    /// `_bucket` series with cumulative counts and `le`, then `_sum` and
    /// `_count`. The `+Inf` bucket and `_count` are the same number.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in h.bounds_secs.iter().enumerate() {
            cumulative = cumulative.saturating_add(h.counts.get(i).copied().unwrap_or(0));
            let le = Float(*bound).to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative);
        }
        let above: u64 = h.counts.iter().skip(h.bounds_secs.len()).sum();
        let total = cumulative.saturating_add(above).max(h.count);
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, total);
        self.sample(&format!("{name}_sum"), labels, Float(h.sum_secs));
        self.sample(&format!("{name}_count"), labels, total);
    }

    fn finish(self) -> String {
        self.out
    }
}

/// A float as the exposition format spells it (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            // Rust never uses an exponent here, and "1" for 1.0: both valid.
            write!(f, "{v}")
        }
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inf_bucket_equals_count_even_for_a_short_counts_vector() {
        let h = Histogram {
            bounds_secs: vec![1.0, 2.0],
            counts: vec![1],
            sum_secs: 7.5,
            count: 3,
        };
        let mut f = Families::default();
        f.family("h_seconds", "histogram", "h");
        f.histogram("h_seconds", &[], &h);
        let text = f.finish();
        assert!(text.contains("h_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"2\"} 1\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("h_seconds_sum 7.5\n"), "{text}");
        assert!(text.contains("h_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn floats_are_spelled_as_prometheus_reads_them() {
        assert_eq!(Float(1.0).to_string(), "1");
        assert_eq!(Float(0.001).to_string(), "0.001");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(1e-7).to_string().parse::<f64>(), Ok(1e-7));
    }
}
