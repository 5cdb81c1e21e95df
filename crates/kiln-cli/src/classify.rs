//! `kiln classify`: sequence classification (labels from `id2label`, softmax scores) and token
//! classification (NER, word pieces grouped into entities like transformers'
//! aggregation_strategy="simple") with an encoder checkpoint's task head.

use anyhow::Result;
use kiln_engine::Classification;
use serde_json::json;

use crate::embed::{load_encoder, model_name};
use crate::Common;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// The text to classify.
    #[arg(long)]
    text: String,
    /// Fail on inputs longer than the model's maximum instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Print JSON: {"model", "labels": [{"label", "score"}...]} or {"model", "entities": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (enc, path) = load_encoder(&a.common)?;
    let e = enc.encode(&a.text, !a.no_truncate)?;
    if let Some(n) = e.truncated_from {
        eprintln!(
            "kiln: the input has {n} tokens: truncated to the model's maximum of {}",
            enc.max_tokens
        );
    }
    match enc.classify(&a.text, !a.no_truncate)? {
        Classification::Sequence(labels) => {
            if a.json {
                let l: Vec<_> = labels
                    .iter()
                    .map(|(l, s)| json!({"label": l, "score": s}))
                    .collect();
                println!("{}", json!({"model": model_name(&path), "labels": l}));
            } else {
                for (l, s) in labels {
                    println!("{l}\t{s:.4}");
                }
            }
        }
        Classification::Tokens(entities) => {
            if a.json {
                let v: Vec<_> = entities
                    .iter()
                    .map(|e| json!({"entity_group": e.entity_group, "score": e.score, "word": e.word, "start": e.start, "end": e.end}))
                    .collect();
                println!("{}", json!({"model": model_name(&path), "entities": v}));
            } else {
                for e in entities {
                    println!(
                        "{}\t{:.4}\t{}..{}\t{}",
                        e.entity_group, e.score, e.start, e.end, e.word
                    );
                }
            }
        }
    }
    Ok(())
}
