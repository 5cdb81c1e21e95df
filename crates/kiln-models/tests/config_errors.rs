//! Configs that disagree with themselves or with their weights are load errors naming the
//! problem, never a panic: heads that do not group into kv heads, a head size the q/k/v weights
//! do not have.

#[allow(dead_code)]
mod common;
use common::fixture_dir;

/// The llama fixture with `edit` applied to its config.json, in a scratch directory.
fn edited(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let src = fixture_dir("llama");
    let dir = std::env::temp_dir().join(format!("kiln-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &std::path::Path) -> String {
    match kiln_models::load(dir, &mut |_, _| {}) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn heads_not_a_multiple_of_kv_heads() {
    let dir = edited("kv", |c| c["num_key_value_heads"] = 3.into());
    let e = load_error(&dir);
    assert!(e.contains("not a multiple of num_key_value_heads 3"), "{e}");
}

#[test]
fn head_size_that_the_weights_do_not_have() {
    let dir = edited("hd", |c| c["head_dim"] = 6.into());
    let e = load_error(&dir);
    assert!(e.contains("q_proj.weight") || e.contains("shape"), "{e}");
}
