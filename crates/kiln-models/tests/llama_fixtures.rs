//! The LLaMA family against transformers: tiny random-weight fixtures from tools/make_fixtures.py.
//! Every layer's hidden state and the logits within 1e-4 relative error, greedy tokens identical,
//! and prefill-then-decode equal to one-shot.

use std::path::Path;

use kiln_models::{load, Model};
use kiln_nn::{Batch, KvCache};
use safetensors::SafeTensors;

mod common;
use common::{fixture_dir, rel_err, Reference};

const FAMILY: &[&str] = &[
    "llama",
    "llama_tied_mqa",
    "mistral",
    "qwen2",
    "llama3_rope",
    "llama_linear_rope",
    "llama_dynamic_rope",
    "llama_yarn_rope",
];

fn load_model(dir: &Path) -> Model {
    load(dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .model
}

fn one_shot_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let h = model
        .forward(ids, &Batch::single(0, ids.len()), &mut cache)
        .unwrap();
    model.logits(&h).unwrap().to_vec_f32()
}

fn step(model: &Model, cache: &mut KvCache, ids: &[u32]) -> Vec<f32> {
    let batch = Batch::single(cache.len(), ids.len());
    let h = model.forward(ids, &batch, cache).unwrap();
    model.logits(&h).unwrap().to_vec_f32()
}

#[test]
fn hidden_states_and_logits_match_transformers() {
    for name in FAMILY {
        let r = Reference::open(name);
        let model = load_model(&fixture_dir(name));
        let ids = r.ids("input_ids");
        let mut cache = model.new_cache();
        let (h, trace) = model
            .forward_traced(&ids, &Batch::single(0, ids.len()), &mut cache)
            .unwrap();
        let n_layers = trace.len() - 1;
        for (i, t) in trace.iter().enumerate().take(n_layers) {
            let want = r.f32(&format!("hidden_states.{i}"));
            let e = rel_err(&t.to_vec_f32(), &want);
            assert!(
                e < 1e-4,
                "{name}: hidden state {i} (input of layer {i}) differs: rel err {e}"
            );
        }
        let e = rel_err(&trace[n_layers].to_vec_f32(), &r.f32("last_layer_pre_norm"));
        assert!(
            e < 1e-4,
            "{name}: output of the last layer differs: rel err {e}"
        );
        let e = rel_err(
            &h.to_vec_f32(),
            &r.f32(&format!("hidden_states.{n_layers}")),
        );
        assert!(e < 1e-4, "{name}: final norm differs: rel err {e}");
        let e = rel_err(&model.logits(&h).unwrap().to_vec_f32(), &r.f32("logits"));
        assert!(e < 1e-4, "{name}: logits differ: rel err {e}");
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in FAMILY {
        let r = Reference::open(name);
        let model = load_model(&fixture_dir(name));
        let vocab = model.info().vocab_size;
        let prompt = r.ids("greedy_prompt");
        let want = r.ids("greedy_ids");
        let want_logits = r.f32("greedy_step_logits");
        let mut cache = model.new_cache();
        let mut logits = step(&model, &mut cache, &prompt);
        let mut got = Vec::new();
        for s in 0..want.len() {
            let last = &logits[logits.len() - vocab..];
            let e = rel_err(last, &want_logits[s * vocab..(s + 1) * vocab]);
            assert!(e < 1e-4, "{name}: step {s} logits differ: rel err {e}");
            let next = last
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0 as u32;
            got.push(next);
            logits = step(&model, &mut cache, &[next]);
        }
        assert_eq!(got, want, "{name}: greedy tokens");
    }
}

#[test]
fn prefill_then_decode_equals_one_shot() {
    // Dynamic NTK is excluded: its frequencies depend on the call's length by definition (and
    // transformers' cached and uncached outputs differ the same way).
    for name in FAMILY.iter().filter(|n| **n != "llama_dynamic_rope") {
        let r = Reference::open(name);
        let model = load_model(&fixture_dir(name));
        let vocab = model.info().vocab_size;
        let ids = r.ids("input_ids");
        let full = one_shot_logits(&model, &ids);
        let mut cache = model.new_cache();
        let mut rows = step(&model, &mut cache, &ids[..10]);
        for chunk in ids[10..].chunks(3).take(1).chain(ids[13..].chunks(1)) {
            rows.extend(step(&model, &mut cache, chunk));
        }
        assert_eq!(rows.len(), full.len());
        for (t, (a, b)) in rows.chunks(vocab).zip(full.chunks(vocab)).enumerate() {
            let e = rel_err(a, b);
            assert!(
                e < 1e-5,
                "{name}: position {t}: incremental vs one-shot rel err {e}"
            );
        }
    }
}

#[test]
fn transformers_4_config_loads_identically() {
    let tmp = std::env::temp_dir().join(format!("kiln-v4-{}", std::process::id()));
    for name in FAMILY {
        let src = fixture_dir(name);
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config_v4.json"), dir.join("config.json")).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let ids = Reference::open(name).ids("input_ids");
        let a = one_shot_logits(&load_model(&src), &ids);
        let b = one_shot_logits(&load_model(&dir), &ids);
        assert_eq!(a, b, "{name}: config.json and config_v4.json disagree");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn unknown_architecture_and_bad_paths_are_errors() {
    let tmp = std::env::temp_dir().join(format!("kiln-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        r#"{"architectures": ["FancyNetForCausalLM"]}"#,
    )
    .unwrap();
    let err = load(&tmp, &mut |_, _| {}).err().unwrap().to_string();
    assert!(
        err.contains("unknown architecture `FancyNetForCausalLM`"),
        "{err}"
    );
    std::fs::write(tmp.join("config.json"), "{ not json").unwrap();
    assert!(load(&tmp, &mut |_, _| {}).is_err());
    assert!(load(&tmp.join("missing"), &mut |_, _| {})
        .err()
        .unwrap()
        .to_string()
        .contains("no such file"));
    // A truncated safetensors file.
    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        tmp.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture_dir("llama").join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&tmp, &mut |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn sharded_safetensors_with_index_load_identically() {
    let src = fixture_dir("llama");
    let dir = std::env::temp_dir().join(format!("kiln-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, &None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ids = Reference::open("llama").ids("input_ids");
    assert_eq!(
        one_shot_logits(&load_model(&src), &ids),
        one_shot_logits(&load_model(&dir), &ids)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
