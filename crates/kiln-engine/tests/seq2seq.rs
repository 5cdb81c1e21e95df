//! Encoder-decoder generation against transformers on the tiny fixtures of
//! tools/make_seq2seq_fixtures.py: the fixture tokenizer gives transformers' source ids, greedy
//! generation gives its tokens (forced BOS/EOS included), and 4-beam search over
//! [`Seq2SeqBeam`] gives `generate(num_beams=4, ...)`'s sequences and scores (beam.json).

use std::path::PathBuf;

use kiln_engine::{
    beam_search, BeamParams, EarlyStopping, Engine, FinishReason, SamplingParams, Seq2SeqBeam,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const FIXTURES: &[&str] = &["t5", "flan_t5", "bart", "mbart", "marian"];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn json(name: &str, file: &str) -> Value {
    let text = std::fs::read_to_string(dir(name).join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ref_ids(name: &str, key: &str) -> Vec<u32> {
    let bytes = std::fs::read(dir(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect()
}

fn engine(name: &str) -> Engine {
    Engine::load(&dir(name), &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in FIXTURES {
        let e = engine(name);
        let r = json(name, "reference.json");
        let src = e
            .encode_prompt(r["source_text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(src, ref_ids(name, "input_ids"), "{name}: tokenizer");
        let mut streamed = String::new();
        let g = e
            .generate(&src, &greedy(12), &mut |p| streamed.push_str(p))
            .unwrap();
        let mut want = ref_ids(name, "greedy_ids");
        // transformers keeps the EOS that ended the sequence; kiln reports it as the finish.
        let ended = want.last().is_some_and(|t| e.eos_ids().contains(t));
        if ended {
            want.pop();
        }
        assert_eq!(g.token_ids, want, "{name}: greedy tokens");
        let reason = if ended {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(g.finish_reason, reason, "{name}");
        assert_eq!(g.text, streamed);
        assert_eq!(g.text, e.tokenizer.decode(&g.token_ids, true).unwrap());
    }
}

fn beam_params(kw: &Value, eos: &[u32]) -> BeamParams {
    let get = |k: &str| kw.get(k);
    BeamParams {
        num_beams: get("num_beams").unwrap().as_u64().unwrap() as usize,
        max_new_tokens: get("max_new_tokens").unwrap().as_u64().unwrap() as usize,
        length_penalty: get("length_penalty").map_or(1.0, |v| v.as_f64().unwrap() as f32),
        early_stopping: match get("early_stopping").and_then(|v| v.as_bool()) {
            Some(true) => EarlyStopping::WhenFull,
            _ => EarlyStopping::Heuristic,
        },
        no_repeat_ngram_size: get("no_repeat_ngram_size")
            .map_or(0, |v| v.as_u64().unwrap() as usize),
        num_return_sequences: get("num_return_sequences")
            .map_or(1, |v| v.as_u64().unwrap() as usize),
        min_new_tokens: 0,
        eos: eos.to_vec(),
    }
}

#[test]
fn four_beam_search_matches_transformers() {
    for name in FIXTURES {
        let e = engine(name);
        let m = e.model.as_seq2seq().unwrap();
        let b = json(name, "beam.json");
        let src: Vec<u32> = b["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let memory = m.encode_memory(&src).unwrap();
        let start = m.info().decoder_start_token_id;
        let pad = json(name, "config.json")["pad_token_id"].as_u64().unwrap() as u32;
        for run in b["runs"].as_array().unwrap() {
            let params = beam_params(&run["kwargs"], &m.info().eos_token_ids);
            let beam = Seq2SeqBeam::new(m, &memory, params.max_new_tokens);
            let (cache, logits) = beam.start().unwrap();
            let hyps = beam_search(&beam, cache, &logits, &[start], &params).unwrap();
            let want = run["sequences"].as_array().unwrap();
            let scores = run["sequences_scores"].as_array().unwrap();
            assert_eq!(hyps.len(), want.len(), "{name} {}", run["kwargs"]);
            for (i, h) in hyps.iter().enumerate() {
                let w: Vec<u32> = want[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                let mut got = vec![start];
                got.extend(&h.tokens);
                // Shorter hypotheses come back padded to the longest one.
                assert_eq!(&w[..got.len()], &got[..], "{name} {} #{i}", run["kwargs"]);
                assert!(w[got.len()..].iter().all(|&t| t == pad), "{name} #{i}");
                let s = scores[i].as_f64().unwrap() as f32;
                assert!(
                    (h.score - s).abs() <= 1e-4 * s.abs().max(1.0),
                    "{name} {} #{i}: score {} vs {s}",
                    run["kwargs"],
                    h.score
                );
            }
        }
    }
}

#[test]
fn engine_beam_generation_drops_the_final_eos() {
    let e = engine("bart");
    let b = json("bart", "beam.json");
    let run = &b["runs"][1];
    let src = e
        .encode_prompt(
            json("bart", "reference.json")["source_text"]
                .as_str()
                .unwrap(),
            false,
        )
        .unwrap();
    let params = beam_params(&run["kwargs"], &[]);
    let g = e.generate_seq2seq_beams(&src, &params).unwrap();
    assert_eq!(g.sequences.len(), 2);
    for (s, w) in g.sequences.iter().zip(run["sequences"].as_array().unwrap()) {
        let w: Vec<u32> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // Without the start token and the forced EOS.
        assert_eq!(s.token_ids, w[1..w.len() - 1], "{:?}", s.token_ids);
        assert_eq!(s.finish_reason, FinishReason::Stop);
        assert_eq!(s.text, e.tokenizer.decode(&s.token_ids, true).unwrap());
    }
}

#[test]
fn seq2seq_bad_requests_are_errors() {
    let e = engine("t5");
    let err = e.encode_prompt("hello", true).unwrap_err().to_string();
    assert!(
        err.contains("encoder-decoder") && err.contains("--chat"),
        "{err}"
    );
    for text in ["", "  "] {
        let err = e.encode_prompt(text, false).unwrap_err().to_string();
        assert!(err.contains("source text is empty"), "{err}");
    }
    let err = e
        .generate(&[], &greedy(4), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("source text is empty"), "{err}");
    let long = "free software ".repeat(40);
    let err = e.encode_prompt(&long, false).unwrap_err().to_string();
    assert!(err.contains("at most 64"), "{err}");
}
