//! `hub_model` against a loopback server standing in for huggingface.co (via HF_ENDPOINT).

mod common;

use common::{list_files, server, Recorder, TestDir, TOKEN};
use kiln_fetch::{hub_model, Error, NoProgress};

#[test]
fn single_file_repo_with_missing_optional_files() {
    let srv = server();
    srv.put(
        "org/tiny/resolve/main/config.json",
        br#"{"model_type":"llama"}"#,
    );
    srv.put("org/tiny/resolve/main/tokenizer.json", b"{}");
    srv.put("org/tiny/resolve/main/model.safetensors", &[7u8; 3000]);
    let cache = TestDir::new("hub-single");
    let progress = Recorder::default();

    let dir = hub_model("org/tiny", cache.path(), &progress).expect("fetch org/tiny");

    assert_eq!(dir, cache.path().join("hub/org--tiny"));
    assert_eq!(
        list_files(&dir),
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("weights"),
        vec![7u8; 3000]
    );
    assert_eq!(
        progress.bytes.load(std::sync::atomic::Ordering::Relaxed),
        3000 + 2 + 22
    );
    let events = progress.events.lock().expect("lock");
    assert!(
        events
            .iter()
            .any(|e| e == "start org/tiny/model.safetensors Some(3000)"),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("start")).count(),
        events.iter().filter(|e| *e == "finish").count()
    );
    drop(events);
    // The bearer token goes to the hub endpoint.
    assert!(srv
        .requests("/org/tiny/")
        .iter()
        .all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));

    // Cached: no request at all, even for the optional files that 404'd.
    let before = srv.requests("/org/tiny/").len();
    assert_eq!(
        hub_model("org/tiny", cache.path(), &NoProgress).expect("cached"),
        dir
    );
    assert_eq!(srv.requests("/org/tiny/").len(), before);
}

#[test]
fn sharded_repo_through_a_redirect() {
    let srv = server();
    let base = "org/sharded/resolve/main";
    srv.put(&format!("{base}/config.json"), b"{}");
    srv.put(
        &format!("{base}/model.safetensors.index.json"),
        br#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#,
    );
    srv.put(
        &format!("{base}/model-00001-of-00002.safetensors"),
        b"shard one",
    );
    // The second shard lives on a "CDN": the hub 302s there, and the token must not follow.
    srv.put("cdn/blob2", b"shard two");
    srv.put(
        &format!("{base}/model-00002-of-00002.safetensors.redirect"),
        format!("{}/cdn/blob2", srv.url).as_bytes(),
    );
    let cache = TestDir::new("hub-sharded");

    let dir = hub_model("org/sharded", cache.path(), &NoProgress).expect("fetch sharded");

    assert_eq!(
        list_files(&dir),
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(
        std::fs::read(dir.join("model-00002-of-00002.safetensors")).expect("shard"),
        b"shard two"
    );
    assert_eq!(
        srv.requests("/cdn/blob2"),
        [("/cdn/blob2".to_string(), None)]
    );

    // A shard lost from the cache is fetched again; of what is present, nothing is. (The
    // optional files that 404'd are asked for again: the repo is incomplete, so an earlier
    // run may have been cut off before reaching them.)
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).expect("rm shard");
    let before = srv.requests("/org/sharded/").len();
    hub_model("org/sharded", cache.path(), &NoProgress).expect("refetch shard");
    let after = srv.requests("/org/sharded/");
    let fetched: Vec<_> = after[before..]
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !p.ends_with(".json") || p.ends_with("index.json"))
        .collect();
    assert_eq!(
        fetched,
        [format!("/{base}/model-00001-of-00002.safetensors")]
    );
}

#[test]
fn missing_required_file_names_file_and_repo() {
    let srv = server();
    srv.put("org/noconfig/resolve/main/model.safetensors", b"w");
    let cache = TestDir::new("hub-noconfig");

    let err = hub_model("org/noconfig", cache.path(), &NoProgress).expect_err("no config.json");

    assert!(
        matches!(err, Error::HubFileMissing { ref file, ref repo, .. } if file == "config.json" && repo == "org/noconfig"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("config.json") && msg.contains("org/noconfig") && msg.contains("404"),
        "{msg}"
    );
}

#[test]
fn missing_shard_names_file_and_repo() {
    let srv = server();
    let base = "org/lostshard/resolve/main";
    srv.put(&format!("{base}/config.json"), b"{}");
    srv.put(
        &format!("{base}/model.safetensors.index.json"),
        br#"{"weight_map":{"a":"gone.safetensors"}}"#,
    );
    let cache = TestDir::new("hub-lostshard");

    let msg = hub_model("org/lostshard", cache.path(), &NoProgress)
        .expect_err("no shard")
        .to_string();

    assert!(
        msg.contains("gone.safetensors") && msg.contains("org/lostshard"),
        "{msg}"
    );
}

#[test]
fn repo_without_weights() {
    let srv = server();
    srv.put("org/noweights/resolve/main/config.json", b"{}");
    let cache = TestDir::new("hub-noweights");

    let err = hub_model("org/noweights", cache.path(), &NoProgress).expect_err("no weights");

    assert!(matches!(err, Error::HubNoWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("org/noweights"));
}

#[test]
fn gated_repo_uses_the_token() {
    let srv = server();
    srv.put("gated/model/resolve/main/config.json", b"{}");
    srv.put(
        "gated/model/resolve/main/model.safetensors",
        b"secret weights",
    );
    let cache = TestDir::new("hub-gated");

    let dir = hub_model("gated/model", cache.path(), &NoProgress).expect("token accepted");

    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("weights"),
        b"secret weights"
    );
}

#[test]
fn interrupted_download_leaves_no_file() {
    let srv = server();
    let base = "org/flaky/resolve/main";
    srv.put(&format!("{base}/config.json"), b"{}");
    srv.put(&format!("{base}/model.safetensors"), &[1u8; 5000]);
    srv.put(&format!("{base}/model.safetensors.truncate"), b"");
    let cache = TestDir::new("hub-flaky");

    let err = hub_model("org/flaky", cache.path(), &NoProgress).expect_err("truncated body");

    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}/{base}/model.safetensors", srv.url)),
        "{msg}"
    );
    // config.json made it; no weights and no `.part` leftovers.
    assert_eq!(
        list_files(&cache.path().join("hub/org--flaky")),
        ["config.json"]
    );
}

#[test]
fn rejects_what_is_not_a_repo_id() {
    let cache = TestDir::new("hub-badid");
    for bad in ["no-slash", "a/b/c", "../etc", "a/.."] {
        let err = hub_model(bad, cache.path(), &NoProgress).expect_err(bad);
        assert!(matches!(err, Error::BadRepoId(_)), "{bad}: {err:?}");
    }
    assert!(list_files(cache.path()).is_empty());
}
