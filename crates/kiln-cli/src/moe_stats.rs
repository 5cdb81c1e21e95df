//! `--moe-stats` of `kiln generate` and `kiln score`: each sparse layer's expert counts, load
//! balance and router entropy, and the Switch auxiliary loss, as a table on stderr (stdout
//! keeps the command's own output) or under `"moe_stats"` in `--json`.

use anyhow::Result;
use kiln_models::{Model, MoeReport};
use serde_json::{json, Value};

/// The model's report, or an error saying that `--moe-stats` needs a mixture of experts.
pub fn report(model: &Model, arch: &str) -> Result<MoeReport> {
    model
        .moe_stats()
        .ok_or_else(|| anyhow::anyhow!("--moe-stats: {arch} is not a mixture-of-experts model"))
}

/// `{"layers": [{"layer", "expert_counts", "tokens", "max_over_mean_load", "router_entropy"}],
/// "aux_loss", "router_aux_loss_coef"}`.
pub fn to_json(r: &MoeReport) -> Value {
    let layers: Vec<Value> = r
        .layers
        .iter()
        .map(|(i, s)| {
            json!({
                "layer": i,
                "expert_counts": s.expert_tokens,
                "tokens": s.tokens,
                "max_over_mean_load": s.max_over_mean_load(),
                "router_entropy": s.mean_entropy(),
            })
        })
        .collect();
    json!({
        "layers": layers,
        "aux_loss": r.aux_loss(),
        "router_aux_loss_coef": r.router_aux_loss_coef,
    })
}

pub fn print(r: &MoeReport) {
    eprintln!("layer  tokens  max/mean  entropy  tokens per expert");
    for (i, s) in &r.layers {
        let counts: Vec<String> = s.expert_tokens.iter().map(|c| c.to_string()).collect();
        eprintln!(
            "{i:>5}  {:>6}  {:>8.3}  {:>7.3}  {}",
            s.tokens,
            s.max_over_mean_load(),
            s.mean_entropy(),
            counts.join(" ")
        );
    }
    eprintln!(
        "aux loss {:.6} (Switch load balancing, before router_aux_loss_coef {})",
        r.aux_loss(),
        r.router_aux_loss_coef
    );
}
