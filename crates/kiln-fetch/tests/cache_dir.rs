//! `default_cache_dir` precedence. One test in its own binary: it sets process-wide variables.

use std::path::PathBuf;

use kiln_fetch::default_cache_dir;

#[test]
fn kiln_cache_then_xdg_then_home() {
    std::env::set_var("HOME", "/home/someone");
    std::env::set_var("XDG_CACHE_HOME", "/xdg/cache");
    std::env::set_var("KILN_CACHE", "/kiln/cache");
    assert_eq!(default_cache_dir(), PathBuf::from("/kiln/cache"));

    std::env::remove_var("KILN_CACHE");
    assert_eq!(default_cache_dir(), PathBuf::from("/xdg/cache/kiln"));

    // Empty means unset; a relative XDG_CACHE_HOME is invalid per the spec and ignored.
    std::env::set_var("KILN_CACHE", "");
    std::env::set_var("XDG_CACHE_HOME", "relative/cache");
    assert_eq!(
        default_cache_dir(),
        PathBuf::from("/home/someone/.cache/kiln")
    );

    std::env::remove_var("XDG_CACHE_HOME");
    assert_eq!(
        default_cache_dir(),
        PathBuf::from("/home/someone/.cache/kiln")
    );
}
