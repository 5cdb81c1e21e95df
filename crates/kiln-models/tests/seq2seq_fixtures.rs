//! Encoder-decoder models (T5, Flan-T5, BART, mBART, Marian) against transformers: tiny random-weight
//! fixtures from tools/make_seq2seq_fixtures.py. Every encoder and decoder layer and the logits
//! within 1e-4 relative error, the decoder run step by step with its cache equal to one shot,
//! and transformers' greedy trajectory reproduced step by step.

use kiln_models::{load, EncoderMemory, Seq2Seq};
use kiln_nn::Batch;
use kiln_tensor::Tensor;

mod common;
use common::{fixture_dir, rel_err, Reference};

const FIXTURES: &[&str] = &["t5", "flan_t5", "bart", "mbart", "marian"];

fn load_seq2seq(name: &str) -> Seq2Seq {
    let dir = fixture_dir(name);
    let loaded = load(&dir, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    loaded
        .model
        .as_seq2seq()
        .unwrap_or_else(|| panic!("{name}: not loaded as an encoder-decoder"))
        .clone()
}

fn check_trace(name: &str, stack: &str, r: &Reference, trace: &[Tensor], out: &Tensor) {
    let n_layers = trace.len() - 1;
    for (i, t) in trace.iter().enumerate().take(n_layers) {
        let e = rel_err(
            &t.to_vec_f32(),
            &r.f32(&format!("{stack}.hidden_states.{i}")),
        );
        assert!(
            e < 1e-4,
            "{name}: {stack} input of layer {i} differs: rel err {e}"
        );
    }
    let e = rel_err(
        &trace[n_layers].to_vec_f32(),
        &r.f32(&format!("{stack}.last_layer_pre_norm")),
    );
    assert!(
        e < 1e-4,
        "{name}: {stack} last layer output differs: rel err {e}"
    );
    let e = rel_err(
        &out.to_vec_f32(),
        &r.f32(&format!("{stack}.hidden_states.{n_layers}")),
    );
    assert!(e < 1e-4, "{name}: {stack} output differs: rel err {e}");
}

/// Logits of `ids` fed to the decoder in one step.
fn one_shot(m: &Seq2Seq, mem: &EncoderMemory, ids: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache();
    let h = m
        .decode(ids, &Batch::single(0, ids.len()), &mut cache, &[mem], None)
        .unwrap();
    m.logits(&h).unwrap().to_vec_f32()
}

#[test]
fn encoder_decoder_layers_and_logits_match_transformers() {
    for name in FIXTURES {
        let r = Reference::open(name);
        let m = load_seq2seq(name);
        let src = r.ids("input_ids");
        let mut trace = Vec::new();
        let enc = m.encode(&src, Some(&mut trace)).unwrap();
        check_trace(name, "encoder", &r, &trace, &enc);

        let mem = m.memory(&enc).unwrap();
        let dec_ids = r.ids("decoder_input_ids");
        assert_eq!(dec_ids[0], m.info().decoder_start_token_id, "{name}");
        let mut cache = m.new_cache();
        let mut trace = Vec::new();
        let h = m
            .decode(
                &dec_ids,
                &Batch::single(0, dec_ids.len()),
                &mut cache,
                &[&mem],
                Some(&mut trace),
            )
            .unwrap();
        check_trace(name, "decoder", &r, &trace, &h);
        let e = rel_err(&m.logits(&h).unwrap().to_vec_f32(), &r.f32("logits"));
        assert!(e < 1e-4, "{name}: logits differ: rel err {e}");
    }
}

#[test]
fn cached_decoding_step_by_step_equals_one_shot() {
    for name in FIXTURES {
        let r = Reference::open(name);
        let m = load_seq2seq(name);
        let mem = m.encode_memory(&r.ids("input_ids")).unwrap();
        let ids = r.ids("decoder_input_ids");
        let full = one_shot(&m, &mem, &ids);
        let vocab = m.info().vocab_size;
        // Steps of 1, then 3, then the rest: positions, causal masks and the T5 bias table
        // must line up with the one-shot pass whatever the split.
        let mut cache = m.new_cache();
        let mut at = 0;
        for n in [1usize, 3, 1, ids.len() - 5] {
            let h = m
                .decode(
                    &ids[at..at + n],
                    &Batch::single(at, n),
                    &mut cache,
                    &[&mem],
                    None,
                )
                .unwrap();
            let got = m.logits(&h).unwrap().to_vec_f32();
            let e = rel_err(&got, &full[at * vocab..(at + n) * vocab]);
            assert!(
                e < 1e-5,
                "{name}: step at {at} (+{n}) differs from one shot: {e}"
            );
            at += n;
        }
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn greedy_trajectory_logits_match_transformers() {
    for name in FIXTURES {
        let r = Reference::open(name);
        let m = load_seq2seq(name);
        let mem = m.encode_memory(&r.ids("input_ids")).unwrap();
        let greedy = r.ids("greedy_ids");
        let want = r.f32("greedy_step_logits");
        let vocab = m.info().vocab_size;
        // One token at a time through the cache, as generation runs.
        let mut cache = m.new_cache();
        let mut prev = m.info().decoder_start_token_id;
        for (t, &next) in greedy.iter().enumerate() {
            let h = m
                .decode(&[prev], &Batch::single(t, 1), &mut cache, &[&mem], None)
                .unwrap();
            let got = m.logits(&h).unwrap().to_vec_f32();
            let e = rel_err(&got, &want[t * vocab..(t + 1) * vocab]);
            assert!(
                e < 1e-4,
                "{name}: greedy step {t} logits differ: rel err {e}"
            );
            prev = next;
        }
    }
}

#[test]
fn bad_sources_are_errors() {
    let t5 = load_seq2seq("t5");
    let e = t5.encode(&[], None).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    // The fixture's config says n_positions 64.
    let e = t5.encode(&[5; 65], None).unwrap_err().to_string();
    assert!(e.contains("65 tokens") && e.contains("64"), "{e}");
    assert!(t5.encode(&[5; 64], None).is_ok());
    let e = t5.encode(&[100_000], None).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    // Flan-T5's config has no n_positions: relative positions take longer sources.
    assert!(load_seq2seq("flan_t5").encode(&[5; 100], None).is_ok());
    // BART's learned positions are a hard limit (max_position_embeddings 64).
    let bart = load_seq2seq("bart");
    let e = bart.encode(&[5; 65], None).unwrap_err().to_string();
    assert!(e.contains("65 tokens"), "{e}");
    // The decoder is bounded the same way.
    let mem = bart.encode_memory(&[5; 4]).unwrap();
    let mut cache = bart.new_cache();
    let e = bart
        .decode(&[2], &Batch::single(64, 1), &mut cache, &[&mem], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("64"), "{e}");
}

#[test]
fn decoder_only_calls_on_seq2seq_are_errors() {
    let dir = fixture_dir("t5");
    let model = load(&dir, &mut |_, _| {}).unwrap().model;
    let mut cache = model.new_cache();
    let e = model
        .forward(&[1, 2], &Batch::single(0, 2), &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder-decoder"), "{e}");
}

/// Two requests with different sources and decoder lengths packed into one step (each with its
/// own cache and encoder memory) give the logits each gives alone.
#[test]
fn packed_requests_equal_separate_ones() {
    use kiln_nn::{SeqCaches, SeqSpan};
    for name in FIXTURES {
        let r = Reference::open(name);
        let m = load_seq2seq(name);
        let src = r.ids("input_ids");
        let (mem_a, mem_b) = (
            m.encode_memory(&src).unwrap(),
            m.encode_memory(&src[3..15]).unwrap(),
        );
        let ids = r.ids("decoder_input_ids");
        let (a, b) = (&ids[..6], &ids[..4]);
        let (want_a, want_b) = (one_shot(&m, &mem_a, a), one_shot(&m, &mem_b, b));
        // Prefill a[..4] and b[..2] separately, then one packed step: a[4..6] and b[2..4].
        let (mut ca, mut cb) = (m.new_cache(), m.new_cache());
        m.decode(&a[..4], &Batch::single(0, 4), &mut ca, &[&mem_a], None)
            .unwrap();
        m.decode(&b[..2], &Batch::single(0, 2), &mut cb, &[&mem_b], None)
            .unwrap();
        let batch = Batch::new(
            vec![4, 5, 2, 3],
            vec![SeqSpan { start: 0, len: 2 }, SeqSpan { start: 2, len: 2 }],
        );
        let tokens = [a[4], a[5], b[2], b[3]];
        let mut store = SeqCaches(vec![&mut ca, &mut cb]);
        let h = m
            .decode(&tokens, &batch, &mut store, &[&mem_a, &mem_b], None)
            .unwrap();
        let got = m.logits(&h).unwrap().to_vec_f32();
        let vocab = m.info().vocab_size;
        let e = rel_err(&got[..2 * vocab], &want_a[4 * vocab..]);
        assert!(e < 1e-5, "{name}: request A packed differs: {e}");
        let e = rel_err(&got[2 * vocab..], &want_b[2 * vocab..]);
        assert!(e < 1e-5, "{name}: request B packed differs: {e}");
    }
}

/// The decoder through the serving engine's paged KV pool (scattered blocks of 4, steps that
/// straddle blocks) gives the contiguous cache's logits: T5's relative bias and causal mask go
/// through the same kernels either way.
#[test]
fn paged_decoder_cache_equals_one_shot() {
    use kiln_nn::{KvCacheDtype, PagedKv, PagedKvPool};
    for name in FIXTURES {
        let r = Reference::open(name);
        let m = load_seq2seq(name);
        let mem = m.encode_memory(&r.ids("input_ids")).unwrap();
        let ids = r.ids("decoder_input_ids");
        let full = one_shot(&m, &mem, &ids);
        let (n_layers, n_kv_heads, head_dim) = m.kv_shape();
        let mut pool = PagedKvPool::new(n_layers, n_kv_heads, head_dim, 8, 4, KvCacheDtype::F32);
        let table: Vec<u32> = vec![5, 2, 7];
        let vocab = m.info().vocab_size;
        let mut at = 0;
        for n in [3usize, 1, 1, ids.len() - 5] {
            let batch = Batch::single(at, n);
            let mut kv = PagedKv::new(&mut pool, vec![&table[..]], vec![at], &batch).unwrap();
            let h = m
                .decode(&ids[at..at + n], &batch, &mut kv, &[&mem], None)
                .unwrap();
            let got = m.logits(&h).unwrap().to_vec_f32();
            let e = rel_err(&got, &full[at * vocab..(at + n) * vocab]);
            assert!(e < 1e-5, "{name}: paged step at {at} (+{n}) differs: {e}");
            at += n;
        }
    }
}
