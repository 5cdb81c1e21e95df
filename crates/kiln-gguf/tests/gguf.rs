//! Integration tests for the GGUF reader: files written by a tiny writer in this test (v2 and v3),
//! corrupted copies of them (truncated, bad magic, v1, absurd counts, bad UTF-8, unknown types),
//! and the real SmolLM2 model when `models/SmolLM2-135M-Instruct.Q4_1.gguf` is present.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_gguf::{Error, GgmlType, GgufFile, Value};

/// A minimal GGUF writer (little-endian), enough to build test files.
#[derive(Default)]
struct Writer {
    version: u32,
    kvs: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    alignment: u64,
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

impl Writer {
    fn new(version: u32) -> Writer {
        Writer {
            version,
            alignment: 32,
            ..Default::default()
        }
    }

    /// A raw kv: type tag followed by the encoded value.
    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend(value);
        self.kvs.push((key.to_string(), v));
        self
    }

    fn kv_str(&mut self, key: &str, s: &str) -> &mut Self {
        let mut v = Vec::new();
        string(&mut v, s.as_bytes());
        self.kv(key, 8, &v)
    }

    fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        for s in items {
            string(&mut v, s.as_bytes());
        }
        self.kv(key, 9, &v)
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            string(&mut out, k.as_bytes());
            out.extend(v);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            string(&mut out, name.as_bytes());
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len() as u64);
        }
        let data_start = align(out.len() as u64);
        out.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend(data);
        }
        out
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn write_tmp(bytes: &[u8]) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kiln-gguf-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

fn sample(version: u32) -> Writer {
    let mut w = Writer::new(version);
    w.kv_str("general.architecture", "llama")
        .kv("llama.block_count", 4, &30u32.to_le_bytes())
        .kv("llama.context_length", 10, &8192u64.to_le_bytes())
        .kv("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .kv("tokenizer.ggml.add_bos_token", 7, &[1])
        .kv("neg", 5, &(-3i32).to_le_bytes())
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ü"]);
    let mut ints = 5u32.to_le_bytes().to_vec();
    ints.extend(3u64.to_le_bytes());
    for i in [1i32, -2, 3] {
        ints.extend(i.to_le_bytes());
    }
    w.kv("tokenizer.ggml.token_type", 9, &ints);
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.tensor("token_embd.weight", &[3, 2], 0, f32s);
    // One Q4_1 block (32 elements, 20 bytes).
    w.tensor("blk.0.attn_q.weight", &[32, 1], 3, vec![7u8; 20]);
    w
}

#[test]
fn reads_v2_and_v3() {
    for version in [2, 3] {
        let path = write_tmp(&sample(version).bytes());
        let f = GgufFile::open(&path).expect("open");
        assert_eq!(f.version(), version);
        assert_eq!(f.architecture().expect("arch"), "llama");
        assert_eq!(f.get_u32("llama.block_count").expect("u32"), 30);
        assert_eq!(f.get_u32("llama.context_length").expect("u64 as u32"), 8192);
        assert_eq!(f.get_f32("llama.rope.freq_base").expect("f32"), 10000.0);
        assert!(f.get_bool("tokenizer.ggml.add_bos_token").expect("bool"));
        assert_eq!(
            f.get_str_array("tokenizer.ggml.tokens").expect("strs"),
            ["a", "b", "ü"]
        );
        assert_eq!(
            f.get_i32_array("tokenizer.ggml.token_type").expect("ints"),
            [1, -2, 3]
        );
        assert_eq!(f.get("neg"), Some(&Value::I32(-3)));

        assert_eq!(f.tensors().len(), 2);
        let emb = f.tensor("token_embd.weight").expect("tensor");
        assert_eq!(emb.dims, [3, 2]);
        assert_eq!(emb.dtype, GgmlType::F32);
        assert_eq!(emb.n_bytes, 24);
        assert_eq!(emb.data_offset % 32, 0);
        let bytes = f.tensor_bytes(emb).expect("bytes");
        assert_eq!(
            f32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")),
            5.0
        );
        let q = f.tensor("blk.0.attn_q.weight").expect("tensor");
        assert_eq!((q.ggml_type, q.offset, q.n_bytes), (3, 32, 20));
        assert_eq!(f.tensor_bytes(q).expect("bytes"), [7u8; 20]);
        assert_eq!(&f.mmap()[q.data_offset as usize..][..20], [7u8; 20]);
    }
}

#[test]
fn getter_errors_name_the_key() {
    let f = GgufFile::open(write_tmp(&sample(3).bytes())).expect("open");
    match f.get_u32("nope") {
        Err(Error::MissingKey { key }) => assert_eq!(key, "nope"),
        other => panic!("{other:?}"),
    }
    match f.get_str("llama.block_count") {
        Err(e @ Error::WrongType { .. }) => {
            assert!(e.to_string().contains("llama.block_count"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.get_u32("neg"), Err(Error::WrongType { .. })));
    assert!(matches!(
        f.get_f32_array("tokenizer.ggml.tokens"),
        Err(Error::WrongType { .. })
    ));
}

#[test]
fn custom_alignment() {
    let mut w = sample(3);
    w.alignment = 64;
    w.kv("general.alignment", 4, &64u32.to_le_bytes());
    let f = GgufFile::open(write_tmp(&w.bytes())).expect("open");
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    let q = f.tensor("blk.0.attn_q.weight").expect("tensor");
    assert_eq!(q.offset, 64);
    assert_eq!(f.tensor_bytes(q).expect("bytes"), [7u8; 20]);
}

#[test]
fn every_truncation_is_an_error() {
    let full = sample(3).bytes();
    for len in 0..full.len() {
        let path = write_tmp(&full[..len]);
        match GgufFile::open(&path) {
            Err(Error::Truncated { .. }) | Err(Error::AbsurdCount { .. }) => {}
            other => panic!("len {len}: {other:?}"),
        }
        std::fs::remove_file(path).ok();
    }
    // Cutting into the last tensor names it.
    let err = GgufFile::open(write_tmp(&full[..full.len() - 1])).expect_err("truncated");
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = sample(3).bytes();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(
        GgufFile::open(write_tmp(&bytes)),
        Err(Error::BadMagic { .. })
    ));
    for version in [1u32, 4, 0x0300_0000] {
        let mut bytes = sample(3).bytes();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        match GgufFile::open(write_tmp(&bytes)) {
            Err(Error::UnsupportedVersion { version: v, .. }) => assert_eq!(v, version),
            other => panic!("{other:?}"),
        }
    }
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("does-not-exist.gguf");
    assert!(matches!(GgufFile::open(missing), Err(Error::Io { .. })));
}

#[test]
fn absurd_counts_fail_fast() {
    let mut bytes = sample(3).bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufFile::open(write_tmp(&bytes)),
        Err(Error::AbsurdCount { .. })
    ));
    let mut bytes = sample(3).bytes();
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        GgufFile::open(write_tmp(&bytes)),
        Err(Error::AbsurdCount { .. })
    ));
    // A huge array count.
    let mut w = Writer::new(3);
    let mut v = 0u32.to_le_bytes().to_vec();
    v.extend((1u64 << 50).to_le_bytes());
    w.kv("big", 9, &v);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::AbsurdCount { .. })
    ));
    // A huge string length.
    let mut w = Writer::new(3);
    w.kv("s", 8, &u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::Truncated { .. })
    ));
    // Dims whose product overflows.
    let mut w = Writer::new(3);
    w.tensor("huge", &[1 << 40, 1 << 40], 0, vec![]);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::BadTensor { .. })
    ));
}

#[test]
fn bad_values_and_types() {
    let mut w = Writer::new(3);
    let mut v = Vec::new();
    string(&mut v, &[0xff, 0xfe]);
    w.kv("bad", 8, &v);
    match GgufFile::open(write_tmp(&w.bytes())) {
        Err(e @ Error::InvalidUtf8 { .. }) => assert!(e.to_string().contains("`bad`"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut w = Writer::new(3);
    w.kv("k", 13, &[0; 8]);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::UnknownValueType { type_id: 13, .. })
    ));
    let mut w = Writer::new(3);
    w.kv("k", 7, &[2]);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::BadValue { .. })
    ));
    let mut w = Writer::new(3);
    w.kv_str("k", "a").kv_str("k", "b");
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::DuplicateKey { .. })
    ));
    let mut w = Writer::new(3);
    w.kv("general.alignment", 4, &48u32.to_le_bytes());
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::BadValue { .. })
    ));

    let mut w = Writer::new(3);
    w.tensor("t", &[4], 4, vec![0; 16]);
    match GgufFile::open(write_tmp(&w.bytes())) {
        Err(Error::UnknownGgmlType {
            tensor, type_id: 4, ..
        }) => assert_eq!(tensor, "t"),
        other => panic!("{other:?}"),
    }
    let mut w = Writer::new(3);
    w.tensor("t", &[16], 2, vec![0; 18]);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::BadTensor { .. })
    ));
    let mut w = Writer::new(3);
    w.tensor("t", &[1], 0, vec![0; 4])
        .tensor("t", &[1], 0, vec![0; 4]);
    assert!(matches!(
        GgufFile::open(write_tmp(&w.bytes())),
        Err(Error::DuplicateTensor { .. })
    ));
}

#[test]
fn foreign_tensor_info_is_rejected() {
    let f = GgufFile::open(write_tmp(&sample(3).bytes())).expect("open");
    let mut info = f.tensors()[0].clone();
    info.data_offset = u64::MAX - 4;
    assert!(matches!(
        f.tensor_bytes(&info),
        Err(Error::ForeignTensor { .. })
    ));
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn real_smollm2() {
    let path = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping real_smollm2: {} not found", path.display());
        return;
    }
    let f = GgufFile::open(&path).expect("open SmolLM2");
    assert_eq!(f.architecture().expect("arch"), "llama");
    assert_eq!(f.get_u32("llama.block_count").expect("block_count"), 30);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("tokenizer.ggml.model").expect("model"), "gpt2");
    let emb = f.tensor("token_embd.weight").expect("token_embd");
    assert_eq!(emb.dims, [576, 49152]);
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    let file_len = std::fs::metadata(&path).expect("stat").len();
    assert!(f.data_offset() + total <= file_len);
    for t in f.tensors() {
        assert_eq!(f.tensor_bytes(t).expect("bytes").len() as u64, t.n_bytes);
    }
}
