//! Request metrics and their rendering in the Prometheus text exposition format (0.0.4).
//!
//! Hand-rendered rather than through the `prometheus` crate (which brings protobuf and a global
//! registry) or `metrics` + an exporter (a recorder installed process-wide, awkward for several
//! servers in one test process): the set is fixed — a few counters, three histograms and gauges
//! read from the engine at scrape time — and the text format is a few lines per metric. Names
//! follow vLLM's (`time_to_first_token_seconds`, ...) under a `kiln_` prefix.
//!
//! Invariant: every request that reaches the engine is counted exactly once by outcome, by
//! [`RequestTracker`]'s `Drop` when it was neither finished nor failed (a client that went away).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::EngineStats;

/// Latency buckets in seconds (vLLM's for TTFT, reused for the others).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

#[derive(Debug)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(LATENCY_BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Generated to a stop or the length limit.
    Success,
    /// Refused before reaching the engine (bad parameter, full queue, shutting down).
    Rejected,
    /// The client went away before the end.
    Cancelled,
    /// The engine reported a failure.
    Failed,
}

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Success, "success"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Failed, "failed"),
];

#[derive(Debug)]
pub struct Metrics {
    outcomes: [AtomicU64; 4],
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    latencies: Mutex<[Histogram; 3]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            outcomes: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            latencies: Mutex::new([Histogram::new(), Histogram::new(), Histogram::new()]),
        }
    }
}

const TTFT: usize = 0;
const ITL: usize = 1;
const E2E: usize = 2;

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .expect("OUTCOMES lists every Outcome variant");
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, which: usize, seconds: f64) {
        let mut h = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        h[which].observe(seconds);
    }

    /// The whole exposition, with the engine's gauges as of now.
    pub fn render(&self, stats: Option<&EngineStats>) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP kiln_requests_total Requests by how they ended.\n");
        out.push_str("# TYPE kiln_requests_total counter\n");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let v = self.outcomes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "kiln_requests_total{{outcome=\"{name}\"}} {v}");
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "kiln_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kiln_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        {
            let h = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            h[TTFT].render(
                &mut out,
                "kiln_time_to_first_token_seconds",
                "Time from request arrival to its first generated token.",
            );
            h[ITL].render(
                &mut out,
                "kiln_inter_token_latency_seconds",
                "Time between consecutive generated tokens of a request.",
            );
            h[E2E].render(
                &mut out,
                "kiln_e2e_request_latency_seconds",
                "Time from request arrival to its last token.",
            );
        }
        if let Some(s) = stats {
            let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            };
            gauge(
                &mut out,
                "kiln_num_requests_running",
                "Requests in the running batch.",
                s.running as f64,
            );
            gauge(
                &mut out,
                "kiln_num_requests_waiting",
                "Requests waiting to be scheduled.",
                s.waiting as f64,
            );
            gauge(
                &mut out,
                "kiln_kv_blocks_used",
                "KV cache blocks in use.",
                s.kv_blocks_used as f64,
            );
            gauge(
                &mut out,
                "kiln_kv_blocks_free",
                "KV cache blocks free.",
                s.kv_blocks_free as f64,
            );
            gauge(
                &mut out,
                "kiln_kv_blocks_total",
                "KV cache blocks in the pool (0 with per-sequence contiguous caches).",
                s.kv_blocks_total as f64,
            );
            gauge(
                &mut out,
                "kiln_kv_slots_used",
                "KV token slots holding a token.",
                s.kv_slots_used as f64,
            );
            let waste = if s.kv_slots_allocated == 0 {
                0.0
            } else {
                1.0 - s.kv_slots_used as f64 / s.kv_slots_allocated as f64
            };
            gauge(
                &mut out,
                "kiln_kv_waste_ratio",
                "Fraction of allocated KV slots holding no token (partly filled blocks).",
                waste,
            );
            let hit_rate = if s.prefix_cache_queries == 0 {
                0.0
            } else {
                s.prefix_cache_hits as f64 / s.prefix_cache_queries as f64
            };
            gauge(
                &mut out,
                "kiln_prefix_cache_hit_rate",
                "Fraction of prompt tokens served from the prefix cache since start.",
                hit_rate,
            );
            let counter = |out: &mut String, name: &str, help: &str, v: u64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            };
            counter(
                &mut out,
                "kiln_preemptions_total",
                "Running sequences evicted to free KV memory.",
                s.preemptions,
            );
            counter(
                &mut out,
                "kiln_engine_steps_total",
                "Engine forward steps.",
                s.steps,
            );
        }
        out
    }
}

/// A mixture-of-experts model's routing counters, appended to the exposition:
/// `kiln_moe_expert_tokens_total{layer,expert}` (tokens routed to each expert since start, each
/// token counted once for each of its top-k experts) and the Switch auxiliary loss over them.
pub fn render_moe(out: &mut String, layers: &[(usize, Vec<u64>)], aux_loss: f64) {
    let name = "kiln_moe_expert_tokens_total";
    let _ = writeln!(
        out,
        "# HELP {name} Tokens routed to each expert of each sparse layer (top-k picks).\n# TYPE {name} counter"
    );
    for (layer, counts) in layers {
        for (expert, c) in counts.iter().enumerate() {
            let _ = writeln!(out, "{name}{{layer=\"{layer}\",expert=\"{expert}\"}} {c}");
        }
    }
    let name = "kiln_moe_aux_loss";
    let _ = writeln!(
        out,
        "# HELP {name} Switch-style load-balancing loss over every token routed since start (before router_aux_loss_coef).\n# TYPE {name} gauge\n{name} {aux_loss}"
    );
}

/// Follows one sequence from arrival to its end, feeding the histograms and counters.
pub struct RequestTracker {
    metrics: Arc<Metrics>,
    arrival: Instant,
    last_token: Option<Instant>,
    done: bool,
}

impl RequestTracker {
    pub fn new(metrics: Arc<Metrics>, arrival: Instant) -> Self {
        RequestTracker {
            metrics,
            arrival,
            last_token: None,
            done: false,
        }
    }

    /// A generated token arrived now.
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self
                .metrics
                .observe(TTFT, (now - self.arrival).as_secs_f64()),
            Some(t) => self.metrics.observe(ITL, (now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    pub fn finished(&mut self, prompt_tokens: usize, completion_tokens: usize) {
        let m = &self.metrics;
        m.observe(E2E, self.arrival.elapsed().as_secs_f64());
        m.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        m.generation_tokens
            .fetch_add(completion_tokens as u64, Ordering::Relaxed);
        m.count(Outcome::Success);
        self.done = true;
    }

    /// Ends tracking without counting (a sequence dropped because a sibling was refused: the
    /// request is counted once, as rejected).
    pub fn discard(mut self) {
        self.done = true;
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn failed(&mut self) {
        self.metrics.count(Outcome::Failed);
        self.done = true;
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.count(Outcome::Cancelled);
        }
    }
}
