//! Unit tests of `pooling` (kept out of the module's file; they reach its private items).

use super::*;

#[test]
fn modes_and_normalization() {
    let h = [1.0, -2.0, 3.0, 4.0]; // two tokens, hidden 2
    let p = |modes: Vec<PoolingMode>, normalize| Pooling { modes, normalize }.pool(&h, 2);
    assert_eq!(p(vec![PoolingMode::Cls], false), vec![1.0, -2.0]);
    assert_eq!(p(vec![PoolingMode::Max], false), vec![3.0, 4.0]);
    assert_eq!(p(vec![PoolingMode::Mean], false), vec![2.0, 1.0]);
    assert_eq!(p(vec![PoolingMode::Cls, PoolingMode::Mean], false).len(), 4);
    let n = p(vec![PoolingMode::Max], true);
    assert!((n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6);
    assert_eq!(Pooling::default().pool(&[], 2), vec![0.0, 0.0]);
    assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.70710677).abs() < 1e-6);
}

#[test]
fn reads_sentence_transformers_modules() {
    let dir = std::env::temp_dir().join(format!("kiln-pooling-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("modules.json"), r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), r#"{"word_embedding_dimension": 4, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#).unwrap();
    assert_eq!(
        Pooling::from_dir(&dir).unwrap(),
        Pooling {
            modes: vec![PoolingMode::Cls],
            normalize: true
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        Pooling::from_dir(Path::new("/nonexistent")).unwrap(),
        Pooling::default()
    );
}
