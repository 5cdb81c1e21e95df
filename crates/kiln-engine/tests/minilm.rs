//! The real all-MiniLM-L6-v2 end to end against sentence-transformers (tools/minilm_reference.py):
//! the same token ids, and cosine similarity >= 0.9999 with its embeddings for every committed
//! sentence (short, long and truncated, punctuation, non-ASCII, empty). The model comes from
//! scripts/fetch-models.sh; without it these tests skip with a note, unless KILN_REQUIRE_MODELS=1
//! (as in CI) makes that a failure.

use std::path::PathBuf;

use kiln_engine::Encoder;
use kiln_models::pooling::{cosine, Pooling, PoolingMode};
use serde_json::Value;

mod common;
use common::{real_model, root};

fn encoder() -> Option<Encoder> {
    let path = real_model("all-MiniLM-L6-v2", "model.safetensors")?;
    Some(Encoder::load(&path, &mut |_, _| {}).expect("MiniLM loads"))
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/minilm")
}

fn reference() -> (Vec<String>, Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let ids = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    // safetensors by hand (u64 header length, JSON header, data): one F32 tensor.
    let bytes = std::fs::read(fixture_dir().join("reference.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header["embeddings"];
    assert_eq!(t["dtype"], "F32");
    let shape: Vec<usize> = t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let off = t["data_offsets"][0].as_u64().unwrap() as usize;
    let data: Vec<f32> = bytes[8 + n + off..]
        .chunks_exact(4)
        .take(shape[0] * shape[1])
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (
        sentences,
        ids,
        data.chunks(shape[1]).map(|r| r.to_vec()).collect(),
    )
}

#[test]
fn pooling_comes_from_modules_json() {
    let Some(e) = encoder() else { return };
    assert_eq!(
        e.pooling,
        Pooling {
            modes: vec![PoolingMode::Mean],
            normalize: true
        }
    );
    assert_eq!(e.max_tokens, 256); // sentence_bert_config.json, below the 512 positions
}

#[test]
fn token_ids_match_sentence_transformers() {
    let Some(e) = encoder() else { return };
    let (sentences, ids, _) = reference();
    assert!(sentences.len() >= 20);
    for (s, want) in sentences.iter().zip(&ids) {
        assert_eq!(&e.encode(s, true).unwrap().ids, want, "{s:?}");
    }
    let long = sentences.last().unwrap();
    assert!(e.encode(long, true).unwrap().truncated_from.unwrap() > 256);
    assert!(e
        .encode(long, false)
        .unwrap_err()
        .to_string()
        .contains("maximum of 256"));
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(e) = encoder() else { return };
    let (sentences, _, want) = reference();
    for batch_size in [32, 5, 1] {
        let got = e.embed(&sentences, &e.pooling, batch_size, true).unwrap();
        assert_eq!(got.vectors.len(), sentences.len());
        assert_eq!(got.truncated.len(), 1);
        for (i, (g, w)) in got.vectors.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(
                c >= 0.9999,
                "batch {batch_size}: sentence {i} {:?}: cosine {c}",
                sentences[i]
            );
            let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }
}
