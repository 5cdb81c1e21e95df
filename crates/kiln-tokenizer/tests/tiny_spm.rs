//! A tiny SentencePiece-style ("llama" model) GGUF, committed as a fixture together with the ids
//! transformers gives for it (tools/make_spm_reference.py): Metaspace prefix, byte fallback,
//! merges recovered from scores, <unk>/<s>/</s>, user-defined tokens, BOS added by default.

use std::path::{Path, PathBuf};

use kiln_gguf::GgufFile;
use kiln_tokenizer::{ChatMessage, ChatTemplate, GgufCompat, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tiny_spm_matches_transformers() {
    let gguf = GgufFile::open(fixtures().join("tiny_spm.gguf")).expect("open");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let text = std::fs::read_to_string(fixtures().join("tiny_spm_ids.json")).expect("read");
    let fx: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        tok.vocab_size() as u64,
        fx["vocab_size"].as_u64().expect("vocab_size")
    );
    assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(1), &[2][..]));
    assert!(tok.is_special(0) && tok.is_special(1) && !tok.is_special(345));
    for case in fx["strings"].as_array().expect("strings") {
        let s = case["text"].as_str().expect("text");
        let got = tok.encode(s, false).expect("encode");
        assert_eq!(got, ids(&case["ids"]), "{s:?}");
        assert_eq!(
            tok.encode(s, true).expect("encode"),
            ids(&case["ids_default"]),
            "{s:?}"
        );
        let decoded = tok.decode(&got, false).expect("decode");
        assert_eq!(decoded, case["decoded"].as_str().expect("decoded"), "{s:?}");
        let mut stream = tok.decode_stream(false);
        let mut pieces = String::new();
        for &id in &got {
            pieces.extend(stream.push(id).expect("push"));
        }
        pieces.extend(stream.flush().expect("flush"));
        assert_eq!(pieces, decoded, "stream {s:?}");
    }
    let chat = ChatTemplate::from_tokenizer(&tok).expect("template");
    let out = chat
        .render(&[ChatMessage::new("user", " hi ")], false)
        .expect("render");
    assert_eq!(out, "<s>[user] hi</s>");
}

#[test]
fn llama_cpp_mode_honours_add_space_prefix() {
    let gguf = GgufFile::open(fixtures().join("tiny_spm.gguf")).expect("open");
    let tok = Tokenizer::from_gguf_with(&gguf, GgufCompat::LlamaCpp).expect("tokenizer");
    // The file does not set add_space_prefix, so llama.cpp's default (true) applies: same ids.
    let hf = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    assert_eq!(
        tok.encode("hello world", true).expect("encode"),
        hf.encode("hello world", true).expect("encode")
    );
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF holding only string metadata.
fn gguf_with(kvs: &[(&str, &str)], name: &str) -> GgufFile {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        string(&mut out, k);
        out.extend(8u32.to_le_bytes());
        string(&mut out, v);
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kiln-tok-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, out).expect("write");
    GgufFile::open(&path).expect("open")
}

#[test]
fn missing_or_unsupported_tokenizer_is_an_error() {
    let g = gguf_with(&[("general.architecture", "llama")], "none");
    let err = Tokenizer::from_gguf(&g).expect_err("no tokenizer");
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
    let g = gguf_with(&[("tokenizer.ggml.model", "bert")], "bert");
    let err = Tokenizer::from_gguf(&g).expect_err("bert");
    assert!(
        matches!(err, kiln_tokenizer::Error::UnsupportedModel { .. }),
        "{err}"
    );
    let g = gguf_with(
        &[
            ("tokenizer.ggml.model", "gpt2"),
            ("tokenizer.ggml.tokens", "oops"),
        ],
        "wrongtype",
    );
    let err = Tokenizer::from_gguf(&g).expect_err("tokens not an array");
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
}
