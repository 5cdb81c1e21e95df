//! SmolLM2's GGUF tokenizer against transformers (the project's acceptance criterion): token ids,
//! decodes, streaming decodes and chat-template renderings must equal the fixture written by
//! tools/make_reference.py. Skips with a note when `models/SmolLM2-135M-Instruct.Q4_1.gguf` is
//! absent (the long-text case also needs /usr/share/common-licenses/GPL-3).

use std::path::{Path, PathBuf};

use kiln_gguf::GgufFile;
use kiln_tokenizer::{ChatMessage, ChatTemplate, GgufCompat, Tokenizer};
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_gguf_ids.json");
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture")
}

fn load() -> Option<Tokenizer> {
    let path = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (run the model fetch script)",
            path.display()
        );
        return None;
    }
    let gguf = GgufFile::open(&path).expect("open gguf");
    Some(Tokenizer::from_gguf(&gguf).expect("tokenizer from gguf"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn stream_concat(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut stream = tok.decode_stream(skip_special);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = stream.push(id).expect("push") {
            assert!(
                !piece.contains('\u{FFFD}'),
                "partial character emitted: {piece:?}"
            );
            out.push_str(&piece);
        }
    }
    if let Some(rest) = stream.flush().expect("flush") {
        out.push_str(&rest);
    }
    out
}

#[test]
fn strings_match_transformers() {
    let Some(tok) = load() else { return };
    let fx = fixture();
    assert_eq!(
        tok.vocab_size() as u64,
        fx["vocab_size"].as_u64().expect("vocab_size")
    );
    assert_eq!(tok.bos_token(), fx["bos_token"].as_str());
    assert_eq!(tok.eos_token(), fx["eos_token"].as_str());
    let eos = tok
        .token_to_id(fx["eos_token"].as_str().expect("eos"))
        .expect("eos id");
    assert_eq!(tok.eos_ids().first(), Some(&eos));
    assert!(tok.is_special(eos));
    assert_eq!(tok.bos_id(), tok.token_to_id("<|im_start|>"));

    let mut failures = Vec::new();
    for case in fx["strings"].as_array().expect("strings") {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false).expect("encode");
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, transformers {want:?}"));
            continue;
        }
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            ids(&case["ids_default"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&got, false).expect("decode"),
            text,
            "round trip {text:?}"
        );
        assert_eq!(
            tok.decode(&got, false).expect("decode"),
            case["decoded"].as_str().expect("decoded")
        );
        let skipped = case["decoded_skip_special"]
            .as_str()
            .expect("decoded_skip_special");
        assert_eq!(tok.decode(&got, true).expect("decode"), skipped, "{text:?}");
        assert_eq!(stream_concat(&tok, &got, false), text, "stream {text:?}");
        assert_eq!(
            stream_concat(&tok, &got, true),
            skipped,
            "stream skip {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn long_text_matches_transformers() {
    let Some(tok) = load() else { return };
    let fx = fixture();
    let case = &fx["long_text"];
    let file = case["file"].as_str().expect("file");
    let Ok(text) = std::fs::read_to_string(file) else {
        eprintln!("skipping long text: {file} not found");
        return;
    };
    let want = ids(&case["ids"]);
    let got = tok.encode(&text, false).expect("encode");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "first difference at id #{i}: got {:?}, transformers {:?}",
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(
        tok.encode(&text, true).expect("encode"),
        ids(&case["ids_default"])
    );
    assert_eq!(tok.decode(&got, false).expect("decode"), text);
    assert_eq!(stream_concat(&tok, &got, false), text);
}

#[test]
fn stream_never_splits_characters() {
    let Some(tok) = load() else { return };
    for text in [
        "🙂",
        "emoji 🙂👍🏽 family 👨‍👩‍👧",
        "日本語のテキスト",
        "naïve café",
    ] {
        let ids = tok.encode(text, false).expect("encode");
        let mut stream = tok.decode_stream(false);
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.extend(stream.push(id).expect("push"));
        }
        assert!(stream.flush().expect("flush").is_none());
        assert_eq!(pieces.concat(), text);
        // 🙂 is two byte-level tokens; the first alone completes nothing.
        if text == "🙂" {
            assert_eq!((ids.len(), pieces.len()), (2, 1));
        }
    }
    let mut stream = tok.decode_stream(false);
    assert!(stream.push(u32::MAX).is_err());
    assert!(tok.decode(&[u32::MAX], false).is_err());
}

#[test]
fn chat_template_matches_transformers() {
    let Some(tok) = load() else { return };
    let template = ChatTemplate::from_tokenizer(&tok).expect("template");
    for case in fixture()["chat"].as_array().expect("chat") {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        let gen = case["add_generation_prompt"].as_bool().expect("flag");
        let got = template.render(&messages, gen).expect("render");
        assert_eq!(got, case["rendered"].as_str().expect("rendered"));
    }
}

#[test]
fn tokenizer_json_round_trip() {
    let Some(tok) = load() else { return };
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kiln-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    tok.inner()
        .save(dir.join("tokenizer.json"), false)
        .expect("save");
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": tok.chat_template()}],
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write config");
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .expect("write gen");
    let from_json = Tokenizer::from_file(dir.join("tokenizer.json")).expect("from_file");
    let text = "<|im_start|>user\nDon't split 12345 naïve 🙂<|im_end|>";
    assert_eq!(
        from_json.encode(text, true).expect("encode"),
        tok.encode(text, true).expect("encode")
    );
    assert_eq!(from_json.eos_ids(), [2, 0]);
    assert_eq!(from_json.bos_id(), Some(1));
    assert_eq!(from_json.chat_template(), tok.chat_template());
    let t = ChatTemplate::from_tokenizer_config(dir.join("tokenizer_config.json"))
        .expect("from config");
    let msgs = [ChatMessage::new("user", "hi")];
    assert_eq!(
        t.render(&msgs, true).expect("render"),
        ChatTemplate::from_tokenizer(&tok)
            .expect("template")
            .render(&msgs, true)
            .expect("render")
    );
    assert!(Tokenizer::from_file(dir.join("missing.json")).is_err());
}

/// llama.cpp splits digits off before GPT-2's regex for pre = "smollm"; transformers does not.
/// On this vocabulary the two agree except where spaces precede digits.
#[test]
fn llama_cpp_mode_differs_only_on_spaces_before_digits() {
    let path = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let gguf = GgufFile::open(&path).expect("open gguf");
    let hf = Tokenizer::from_gguf(&gguf).expect("transformers mode");
    let cpp = Tokenizer::from_gguf_with(&gguf, GgufCompat::LlamaCpp).expect("llama.cpp mode");
    for text in ["Hello world", "1234567", " 123 4567 89", "don't I'll"] {
        assert_eq!(
            hf.encode(text, false).expect("hf"),
            cpp.encode(text, false).expect("cpp"),
            "{text:?}"
        );
    }
    let text = "digits  1  22";
    assert_ne!(
        hf.encode(text, false).expect("hf"),
        cpp.encode(text, false).expect("cpp")
    );
    assert_eq!(
        cpp.decode(&cpp.encode(text, false).expect("cpp"), false)
            .expect("decode"),
        text
    );
}
