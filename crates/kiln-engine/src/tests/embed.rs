//! Unit tests of `embed` (kept out of the module's file; they reach its private items).

use super::*;

#[test]
fn simple_grouping_like_transformers() {
    let t = |label: &str, score: f32, start: usize| TokenTag {
        label: label.into(),
        score,
        id: start as u32,
        start,
        end: start + 1,
    };
    let tokens = [
        t("B-PER", 0.9, 0),
        t("I-PER", 0.7, 1),
        t("O", 0.99, 2),
        t("I-LOC", 0.5, 3),
        t("B-LOC", 0.8, 4),
        t("I-PER", 0.6, 5),
    ];
    let g = group_entities(&tokens, &|ids| format!("{ids:?}"));
    let summary: Vec<(&str, usize, usize)> = g
        .iter()
        .map(|e| (e.entity_group.as_str(), e.start, e.end))
        .collect();
    assert_eq!(
        summary,
        vec![("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("PER", 5, 6)]
    );
    assert!((g[0].score - 0.8).abs() < 1e-6);
    assert_eq!(g[0].word, "[0, 1]");
}

#[test]
fn truncation_keeps_prefix_and_suffix_specials() {
    let mut e = Encoded {
        ids: vec![101, 5, 6, 7, 8, 102],
        type_ids: vec![0; 6],
        offsets: vec![(0, 0); 6],
        special: vec![true, false, false, false, false, true],
        truncated_from: None,
    };
    truncate_keeping_specials(&mut e, &[5, 6, 7, 8], 4).unwrap();
    assert_eq!(e.ids, vec![101, 5, 6, 102]);
    assert_eq!(e.truncated_from, Some(6));
    assert_eq!(e.special, vec![true, false, false, true]);
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Encoder {
    Encoder::load(&fixture(name), &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

#[test]
fn ner_entities_match_the_transformers_pipeline() {
    let e = load("roberta");
    let r = reference("roberta");
    let texts = r["texts"].as_array().unwrap();
    for (text, want) in texts.iter().zip(r["ner_simple"].as_array().unwrap()) {
        let text = text.as_str().unwrap();
        let Classification::Tokens(got) = e.classify(text, true).unwrap() else {
            panic!("token head")
        };
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{text}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(
                g.entity_group,
                w["entity_group"].as_str().unwrap(),
                "{text}"
            );
            assert_eq!(
                (g.start as u64, g.end as u64),
                (w["start"].as_u64().unwrap(), w["end"].as_u64().unwrap()),
                "{text}: {g:?}"
            );
            assert!(
                (g.score - w["score"].as_f64().unwrap() as f32).abs() < 1e-4,
                "{text}: {g:?}"
            );
            assert_eq!(g.word, w["word"].as_str().unwrap(), "{text}");
        }
    }
}

#[test]
fn token_ids_match_transformers_wordpiece_bpe_unigram() {
    for name in ["bert", "roberta", "roberta_xlm"] {
        let e = load(name);
        let r = reference(name);
        let st = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
        let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
        let o = &header["input_ids"]["data_offsets"];
        let ids: Vec<u32> = st
            [8 + n + o[0].as_u64().unwrap() as usize..8 + n + o[1].as_u64().unwrap() as usize]
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let mut at = 0;
        for text in r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
        {
            let got = e.encode(text, true).unwrap().ids;
            assert_eq!(got, ids[at..at + got.len()], "{name}: {text}");
            at += got.len();
        }
    }
}

#[test]
fn sequence_labels_match_transformers() {
    for name in ["bert", "roberta_xlm", "distilbert_cls"] {
        let e = load(name);
        let r = reference(name);
        let texts = r["texts"].as_array().unwrap();
        for (text, want) in texts.iter().zip(r["predicted"].as_array().unwrap()) {
            let Some(text) = text.as_str() else { continue }; // the sentence pair
            let Classification::Sequence(labels) = e.classify(text, true).unwrap() else {
                panic!("sequence head")
            };
            assert_eq!(labels[0].0, want.as_str().unwrap(), "{text}");
            assert_eq!(labels.len(), 3);
            assert!((labels.iter().map(|l| l.1).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn pooled_embeddings_match_sentence_transformers_semantics() {
    use kiln_models::pooling::PoolingMode;
    for name in [
        "bert",
        "roberta",
        "distilbert",
        "roberta_xlm",
        "distilbert_cls",
    ] {
        let e = load(name);
        let r = reference(name);
        let st = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
        let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
        let tensor = |key: &str| -> Vec<f32> {
            let o = &header[key]["data_offsets"];
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            st[8 + n + a..8 + n + b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        // Plain texts only (the bert pair is not a single input).
        let texts: Vec<String> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let hidden = e.model.cfg.hidden;
        for (mode, key, normalize) in [
            (PoolingMode::Mean, "pooled_mean", false),
            (PoolingMode::Cls, "pooled_cls", false),
            (PoolingMode::Max, "pooled_max", false),
            (PoolingMode::Mean, "pooled_mean_normalized", true),
        ] {
            let got = e
                .embed(
                    &texts,
                    &Pooling {
                        modes: vec![mode],
                        normalize,
                    },
                    3,
                    true,
                )
                .unwrap();
            let want = tensor(key);
            for (i, g) in got.vectors.iter().enumerate() {
                let w = &want[i * hidden..(i + 1) * hidden];
                let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
                assert!(err < 1e-4, "{name} {key} input {i}: rel err {err}");
            }
        }
    }
}

#[test]
fn old_sentence_transformers_layout_with_a_transformer_subdirectory() {
    let dir = std::env::temp_dir().join(format!("kiln-st-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(fixture("bert"), dir.join("0_Transformer")).unwrap();
    std::fs::write(dir.join("modules.json"), r#"[{"idx":0,"name":"0","path":"0_Transformer","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#).unwrap();
    let e = Encoder::load(&dir, &mut |_, _| {});
    std::fs::remove_dir_all(&dir).unwrap();
    let e = e.unwrap();
    assert_eq!(e.max_tokens, 64);
    assert_eq!(e.pooling, Pooling::default());
}

#[test]
fn bad_inputs_are_errors_or_defined_results() {
    let e = load("bert");
    // Empty and special-character-only inputs embed their special tokens ([CLS] [SEP]).
    let got = e
        .embed(
            &["".into(), "!!!".into(), "[CLS]".into()],
            &e.pooling,
            8,
            true,
        )
        .unwrap();
    assert!(got
        .vectors
        .iter()
        .all(|v| v.len() == 64 && v.iter().all(|x| x.is_finite())));
    assert_eq!(e.encode("", true).unwrap().ids.len(), 2);
    let long = "free software ".repeat(100);
    assert!(e
        .encode(&long, false)
        .unwrap_err()
        .to_string()
        .contains("maximum of 64"));
    assert_eq!(e.encode(&long, true).unwrap().ids.len(), 64);
    let err = e
        .embed(&[long], &e.pooling, 1, false)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("input 1:"), "{err}");
    // Embedding models have no head; decoder checkpoints and non-models are refused.
    assert!(load("distilbert")
        .classify("hi", true)
        .unwrap_err()
        .to_string()
        .contains("no classification head"));
    let err = Encoder::load(&fixture("llama"), &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not an encoder model"), "{err}");
    assert!(Encoder::load(&fixture("minilm"), &mut |_, _| {}).is_err());
}
