//! Encoder-only models against transformers: tiny random-weight fixtures from
//! tools/make_encoder_fixtures.py (bert with a sequence-classification head, roberta with a
//! token-classification head, distilbert bare, roberta_xlm = XLM-R and distilbert_cls with their
//! own sequence-classification heads). Every layer's hidden state and the head outputs
//! within 1e-4 relative error (max abs diff / max abs reference), all sequences packed into one
//! batch without padding; a sequence's result does not depend on the rest of the batch.

use kiln_models::{load, Bert, Model};
use kiln_nn::Batch;

mod common;
use common::{fixture_dir, rel_err, Reference};

const FAMILY: &[&str] = &[
    "bert",
    "roberta",
    "distilbert",
    "roberta_xlm",
    "distilbert_cls",
];

fn load_bert(name: &str) -> Model {
    load(&fixture_dir(name), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .model
}

fn encoder(m: &Model) -> &Bert {
    m.as_encoder().expect("an encoder")
}

fn packed(r: &Reference) -> (Vec<u32>, Vec<u32>, Vec<usize>) {
    let lens: Vec<usize> = r.ids("seq_lens").iter().map(|&l| l as usize).collect();
    (r.ids("input_ids"), r.ids("token_type_ids"), lens)
}

#[test]
fn hidden_states_match_transformers_layer_by_layer() {
    for name in FAMILY {
        let r = Reference::open(name);
        let model = load_bert(name);
        let (ids, types, lens) = packed(&r);
        let mut trace = Vec::new();
        let h = encoder(&model)
            .forward(&ids, Some(&types), &Batch::packed(&lens), Some(&mut trace))
            .unwrap();
        for (i, t) in trace.iter().enumerate() {
            let e = rel_err(&t.to_vec_f32(), &r.f32(&format!("hidden_states.{i}")));
            assert!(e < 1e-4, "{name}: hidden state {i} differs: rel err {e}");
        }
        assert_eq!(trace.len(), encoder(&model).cfg.n_layers + 1);
        let e = rel_err(
            &h.to_vec_f32(),
            &r.f32(&format!("hidden_states.{}", trace.len() - 1)),
        );
        assert!(e < 1e-4, "{name}: output differs: rel err {e}");
    }
}

#[test]
fn head_outputs_match_transformers() {
    for (name, per_token) in [
        ("bert", false),
        ("roberta", true),
        ("roberta_xlm", false),
        ("distilbert_cls", false),
    ] {
        let r = Reference::open(name);
        let model = load_bert(name);
        let m = encoder(&model);
        let (ids, types, lens) = packed(&r);
        let batch = Batch::packed(&lens);
        let h = m.forward(&ids, Some(&types), &batch, None).unwrap();
        let logits = m.classify(&h, &batch).unwrap().expect("a head");
        let rows = if per_token { ids.len() } else { lens.len() };
        assert_eq!(logits.dims()[0], rows, "{name}");
        let e = rel_err(&logits.to_vec_f32(), &r.f32("logits"));
        assert!(e < 1e-4, "{name}: logits differ: rel err {e}");
        let e = rel_err(
            &logits.softmax_last().unwrap().to_vec_f32(),
            &r.f32("probs"),
        );
        assert!(e < 1e-4, "{name}: probabilities differ: rel err {e}");
    }
    assert!(!encoder(&load_bert("distilbert")).has_head());
}

#[test]
fn a_sequence_gives_the_same_result_alone_and_in_any_batch() {
    for name in FAMILY {
        let r = Reference::open(name);
        let model = load_bert(name);
        let m = encoder(&model);
        let (ids, types, lens) = packed(&r);
        let hidden = m.cfg.hidden;
        let all = m
            .forward(&ids, Some(&types), &Batch::packed(&lens), None)
            .unwrap()
            .to_vec_f32();
        // Each alone, and the batch reversed. Not bit-exact: gemm's blocking (and so its float
        // summation order) depends on the row count, which moves results by ~1 ulp.
        let mut starts = vec![0];
        for l in &lens {
            starts.push(starts.last().unwrap() + l);
        }
        let mut rev_ids = Vec::new();
        let mut rev_types = Vec::new();
        for s in (0..lens.len()).rev() {
            let rows = starts[s]..starts[s + 1];
            let alone = m
                .forward(
                    &ids[rows.clone()],
                    Some(&types[rows.clone()]),
                    &Batch::packed(&[lens[s]]),
                    None,
                )
                .unwrap();
            let e = rel_err(
                &alone.to_vec_f32(),
                &all[rows.start * hidden..rows.end * hidden],
            );
            assert!(e < 1e-6, "{name}: sequence {s} alone differs: rel err {e}");
            rev_ids.extend_from_slice(&ids[rows.clone()]);
            rev_types.extend_from_slice(&types[rows]);
        }
        let rev_lens: Vec<usize> = lens.iter().rev().copied().collect();
        let rev = m
            .forward(&rev_ids, Some(&rev_types), &Batch::packed(&rev_lens), None)
            .unwrap()
            .to_vec_f32();
        let mut at = 0;
        for s in (0..lens.len()).rev() {
            let n = lens[s] * hidden;
            let e = rel_err(
                &rev[at..at + n],
                &all[starts[s] * hidden..starts[s + 1] * hidden],
            );
            assert!(
                e < 1e-6,
                "{name}: sequence {s} reordered differs: rel err {e}"
            );
            at += n;
        }
    }
}

#[test]
fn decoder_methods_on_an_encoder_are_errors_not_panics() {
    let model = load_bert("bert");
    let mut cache = model.new_cache();
    let err = model
        .forward(&[1, 2, 3], &Batch::single(0, 3), &mut cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder-only"), "{err}");
    assert!(load_bert("llama").as_encoder().is_none());
}

#[test]
fn inputs_longer_than_the_position_table_are_errors() {
    let model = load_bert("roberta");
    let m = encoder(&model);
    let max = m.cfg.max_tokens();
    assert_eq!(max, 64); // max_position_embeddings 66 - (padding_idx 1 + 1)
    let ids = vec![5u32; max + 1];
    let err = m
        .forward(&ids, None, &Batch::packed(&[max + 1]), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 64 positions"), "{err}");
    assert!(m
        .forward(&ids[..max], None, &Batch::packed(&[max]), None)
        .is_ok());
    // Spans that do not tile the tokens are an error, not a panic.
    assert!(m
        .forward(&ids[..10], None, &Batch::packed(&[4, 4]), None)
        .is_err());
    assert!(m
        .forward(&ids[..8], Some(&[0; 3]), &Batch::packed(&[4, 4]), None)
        .is_err());
    // Empty batch: no tokens, no sequences, an empty result.
    assert_eq!(
        m.forward(&[], None, &Batch::packed(&[]), None)
            .unwrap()
            .dims(),
        &[0, 64]
    );
}
