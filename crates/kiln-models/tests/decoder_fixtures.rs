//! GPT-2 and BLOOM against transformers: tiny random-weight fixtures from
//! tools/make_decoder_fixtures.py. Every layer's hidden state and the logits within 1e-4 relative
//! error, greedy tokens identical, prefill-then-decode equal to one-shot, packed sequences equal
//! to separate ones, and BLOOM (ALiBi) past its training length.

use std::path::Path;

use kiln_models::{load, Error, Model};
use kiln_nn::{Batch, KvCache, SeqCaches};
use safetensors::SafeTensors;

mod common;
use common::{argmax, fixture_dir, rel_err, Reference};

const FAMILY: &[&str] = &["gpt2", "bloom", "bloom_post_ln"];

fn load_model(dir: &Path) -> Model {
    load(dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .model
}

fn step(model: &Model, cache: &mut KvCache, ids: &[u32]) -> Vec<f32> {
    let batch = Batch::single(cache.len(), ids.len());
    let h = model.forward(ids, &batch, cache).unwrap();
    model.logits(&h).unwrap().to_vec_f32()
}

fn one_shot_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    step(model, &mut model.new_cache(), ids)
}

/// Greedy decoding from `prompt` for `n` tokens: the ids and each step's logits.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let vocab = model.info().vocab_size;
    let mut cache = model.new_cache();
    let mut logits = step(model, &mut cache, prompt);
    let (mut ids, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let last = logits[logits.len() - vocab..].to_vec();
        let next = argmax(&last);
        ids.push(next);
        steps.push(last);
        logits = step(model, &mut cache, &[next]);
    }
    (ids, steps)
}

#[test]
fn hidden_states_and_logits_match_transformers() {
    for name in FAMILY {
        let r = Reference::open(name);
        let model = load_model(&fixture_dir(name));
        let ids = r.ids("input_ids");
        let (h, trace) = model
            .forward_traced(&ids, &Batch::single(0, ids.len()), &mut model.new_cache())
            .unwrap();
        let n_layers = trace.len() - 1;
        assert_eq!(n_layers, model.info().n_layers);
        for (i, t) in trace.iter().enumerate().take(n_layers) {
            let e = rel_err(&t.to_vec_f32(), &r.f32(&format!("hidden_states.{i}")));
            assert!(e < 1e-4, "{name}: input of block {i} differs: rel err {e}");
        }
        let e = rel_err(&trace[n_layers].to_vec_f32(), &r.f32("last_layer_pre_norm"));
        assert!(
            e < 1e-4,
            "{name}: output of the last block differs: rel err {e}"
        );
        let e = rel_err(
            &h.to_vec_f32(),
            &r.f32(&format!("hidden_states.{n_layers}")),
        );
        assert!(e < 1e-4, "{name}: ln_f differs: rel err {e}");
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
        let want = r.ids("greedy_ids");
        let want_logits = r.f32("greedy_step_logits");
        let (got, steps) = greedy(&model, &r.ids("greedy_prompt"), want.len());
        for (s, row) in steps.iter().enumerate() {
            let e = rel_err(row, &want_logits[s * vocab..(s + 1) * vocab]);
            assert!(e < 1e-4, "{name}: step {s} logits differ: rel err {e}");
        }
        assert_eq!(got, want, "{name}: greedy tokens");
    }
}

#[test]
fn prefill_then_decode_equals_one_shot() {
    for name in FAMILY {
        let model = load_model(&fixture_dir(name));
        let vocab = model.info().vocab_size;
        let ids = Reference::open(name).ids("input_ids");
        let full = one_shot_logits(&model, &ids);
        let mut cache = model.new_cache();
        // A prefill long enough for the blocked attention path, a 3-token chunk, then decode.
        let mut rows = step(&model, &mut cache, &ids[..10]);
        rows.extend(step(&model, &mut cache, &ids[10..13]));
        for &t in &ids[13..] {
            rows.extend(step(&model, &mut cache, &[t]));
        }
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
fn packed_sequences_equal_separate_ones() {
    for name in FAMILY {
        let model = load_model(&fixture_dir(name));
        let ids = Reference::open(name).ids("input_ids");
        let (a, b) = (&ids[..7], &ids[7..19]);
        let (mut ca, mut cb) = (model.new_cache(), model.new_cache());
        // Prefill both in one step, then decode one token of each in one step.
        let tokens: Vec<u32> = a.iter().chain(b).copied().collect();
        let mut batch = Batch::packed(&[a.len(), b.len()]);
        model
            .forward(&tokens, &batch, &mut SeqCaches(vec![&mut ca, &mut cb]))
            .unwrap();
        batch.positions = vec![a.len(), b.len()];
        batch.seqs = Batch::packed(&[1, 1]).seqs;
        let h = model
            .forward(&ids[20..22], &batch, &mut SeqCaches(vec![&mut ca, &mut cb]))
            .unwrap();
        let packed = model.logits(&h).unwrap().to_vec_f32();
        let vocab = model.info().vocab_size;
        for (seq, want_next) in [(a, ids[20]), (b, ids[21])].into_iter().enumerate() {
            let mut alone: Vec<u32> = want_next.0.to_vec();
            alone.push(want_next.1);
            let full = one_shot_logits(&model, &alone);
            let e = rel_err(
                &packed[seq * vocab..(seq + 1) * vocab],
                &full[full.len() - vocab..],
            );
            assert!(
                e < 1e-5,
                "{name}: sequence {seq} packed vs alone: rel err {e}"
            );
        }
    }
}

#[test]
fn bloom_runs_past_its_training_length() {
    let dir = fixture_dir("bloom");
    let loaded = load(&dir, &mut |_, _| {}).unwrap();
    let model = loaded.model;
    let trained = loaded.config.usize("seq_length").unwrap();
    let r = Reference::open("bloom");
    let long = r.ids("long_input_ids");
    assert!(
        long.len() >= 2 * trained,
        "fixture must go past 2x seq_length"
    );
    assert!(loaded.info.max_context >= long.len());

    let logits = one_shot_logits(&model, &long);
    assert!(logits.iter().all(|x| x.is_finite()));
    let e = rel_err(&logits, &r.f32("long_logits"));
    assert!(
        e < 1e-4,
        "one-shot logits at {} tokens: rel err {e}",
        long.len()
    );

    let prompt = r.ids("greedy_prompt");
    let want = r.ids("long_greedy_ids");
    let (got, steps) = greedy(&model, &prompt, want.len());
    assert_eq!(
        got,
        want,
        "greedy tokens to {} positions",
        prompt.len() + want.len()
    );
    let last = steps.last().unwrap();
    assert!(last.iter().all(|x| x.is_finite()));
    let e = rel_err(last, &r.f32("long_greedy_last_logits"));
    assert!(e < 1e-4, "last greedy step logits: rel err {e}");
}

#[test]
fn gpt2_positions_past_the_table_are_an_error() {
    let model = load_model(&fixture_dir("gpt2"));
    let n_positions = model.info().max_context;
    let ids = vec![1u32; n_positions + 1];
    let Err(err) = model.forward(&ids, &Batch::single(0, ids.len()), &mut model.new_cache()) else {
        panic!("a forward past n_positions must fail");
    };
    assert!(
        matches!(err, Error::InputTooLong { max_tokens, .. } if max_tokens == n_positions),
        "{err}"
    );
}

/// GPT2Model / BloomModel checkpoints carry the same tensors without the `transformer.` prefix.
#[test]
fn headless_checkpoints_without_prefix_load_identically() {
    for (name, arch) in [("gpt2", "GPT2Model"), ("bloom", "BloomModel")] {
        let src = fixture_dir(name);
        let dir = std::env::temp_dir().join(format!("kiln-{name}-bare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        cfg["architectures"] = serde_json::json!([arch]);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .names()
            .into_iter()
            .map(|n| {
                let bare = n.strip_prefix("transformer.").expect("prefixed key");
                (bare.to_string(), st.tensor(n).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
        let ids = Reference::open(name).ids("input_ids");
        assert_eq!(
            one_shot_logits(&load_model(&src), &ids),
            one_shot_logits(&load_model(&dir), &ids),
            "{name}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn model_info_comes_from_the_config() {
    for (name, arch, max_context) in [
        ("gpt2", "GPT2LMHeadModel", 64),
        // 4x seq_length 16: ALiBi extrapolates, see bloom.rs.
        ("bloom", "BloomForCausalLM", 64),
        // No seq_length in the config: 4x BLOOM's 2048.
        ("bloom_post_ln", "BloomForCausalLM", 8192),
    ] {
        let info = load(&fixture_dir(name), &mut |_, _| {}).unwrap().info;
        assert_eq!(info.architecture, arch);
        assert_eq!(info.vocab_size, 384);
        assert_eq!(info.max_context, max_context, "{name}");
        assert_eq!(info.eos_token_ids, [0], "{name}");
        assert_eq!(info.bos_token_id, Some(0), "{name}");
    }
}

/// The gpt2 and bloom fixtures as llama.cpp's converter writes them (f16 matrices, `gpt2`/`bloom`
/// tensor names, GPT-2 Conv1D weights pre-transposed, BLOOM q/k/v rows regrouped, BLOOM's head
/// written out as `output`), against transformers with the same f16-rounded weights.
#[test]
fn gpt2_and_bloom_from_gguf_match_transformers() {
    for (name, arch, max_context) in [
        ("gpt2_gguf", "GPT2LMHeadModel", 64),
        ("bloom_gguf", "BloomForCausalLM", 64),
    ] {
        let path = fixture_dir(name).join("model.gguf");
        let loaded = load(&path, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.info.architecture, arch);
        assert_eq!(loaded.info.max_context, max_context, "{name}");
        assert_eq!(loaded.info.eos_token_ids, [0]);
        let model = loaded.model;
        let r = Reference::open(name);
        let e = rel_err(
            &one_shot_logits(&model, &r.ids("input_ids")),
            &r.f32("logits"),
        );
        assert!(e < 1e-4, "{name}: logits: rel err {e}");
        let want = r.ids("greedy_ids");
        assert_eq!(
            greedy(&model, &r.ids("greedy_prompt"), want.len()).0,
            want,
            "{name}"
        );
    }
}

/// GPT-2 variants kiln does not implement are refused at load, not run wrongly.
#[test]
fn unsupported_gpt2_variants_are_config_errors() {
    let src = fixture_dir("gpt2");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (key, value, needle) in [
        (
            "scale_attn_by_inverse_layer_idx",
            serde_json::json!(true),
            "scale_attn_by_inverse_layer_idx",
        ),
        (
            "scale_attn_weights",
            serde_json::json!(false),
            "scale_attn_weights",
        ),
        ("n_head", serde_json::json!(5), "not a multiple of n_head 5"),
        (
            "activation_function",
            serde_json::json!("swiglu"),
            "unsupported activation",
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("kiln-gpt2-{key}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg.clone();
        c[key] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let err = load(&dir, &mut |_, _| {}).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains(needle)),
            "{key}: {err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
