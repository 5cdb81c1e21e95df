//! Run-time compilation of the embedded kernel sources to cubins with NVRTC, and a disk cache
//! of the results.
//!
//! NVRTC is loaded dynamically by cudarc, which panics when `libnvrtc.so` cannot be found;
//! [`nvrtc_available`] checks for it first (and catches the panic of a library with missing
//! symbols) so every entry point here returns a clear `Err` instead. Headers (`cuda_bf16.h`,
//! `cuda_fp16.h` and the CCCL headers they include) come from [`include_dirs`]:
//! `scripts/cuda-env.sh` sets `KILN_CUDA_INCLUDE` and `LD_LIBRARY_PATH` from a CUDA toolkit or
//! the PyPI wheels, so nothing needs nvcc.
//!
//! Options: `--gpu-architecture=<arch>` (a real `sm_XX[a]`, cubins are not portable), `-std=c++17`,
//! `-default-device`, the include dirs. Not `--use_fast_math`: the kernels need accurate
//! `expf`/`erff`/`tanhf`/`cosf` to agree with the CPU backend.
//!
//! Cache: `$KILN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/kiln/kernels`, else
//! `~/.cache/kiln/kernels`. A file's name holds an FNV-1a hash of the source, arch, NVRTC
//! version, options and include dirs; its contents are a header (magic, length, hash of the
//! payload) and the cubin, so a short or corrupt file is detected and recompiled. Files are
//! written to a temporary name and renamed, so readers never see a partial file; a cache that
//! cannot be written is skipped silently (the compiled cubin is returned all the same).

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};

const NOT_FOUND: &str = "libnvrtc.so (CUDA 13 NVRTC) was not found: put its directory on \
     LD_LIBRARY_PATH (`source scripts/cuda-env.sh` does, from a CUDA toolkit or the PyPI wheels)";

/// Whether NVRTC can be loaded and called; the `Err` says why not, in one line.
pub(crate) fn nvrtc_available() -> Result<(), String> {
    // SAFETY: only tries to dlopen the candidate library names; nothing is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(NOT_FOUND.to_string());
    }
    // A library was found, but an old one can lack a symbol cudarc wants: that panics.
    match std::panic::catch_unwind(raw_version) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("nvrtcVersion failed: {e}")),
        Err(panic) => Err(format!(
            "libnvrtc.so was found but could not be used ({}); CUDA 13 NVRTC is needed",
            panic_message(&*panic)
        )),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn raw_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes of one c_int for the duration of the call.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("{e:?}"))?;
    Ok((major, minor))
}

/// NVRTC's (major, minor) version, e.g. (13, 0).
pub(crate) fn nvrtc_version() -> Result<(i32, i32), String> {
    nvrtc_available()?;
    raw_version()
}

/// Splits a `:`-separated list of directories, dropping empty entries.
fn split_dirs(list: &str) -> Vec<PathBuf> {
    list.split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Header directories for NVRTC: `KILN_CUDA_INCLUDE` (`:`-separated) when set, else those of
/// `$CUDA_HOME/include`, `/usr/local/cuda/include` and their `cccl/` subdirs that exist.
pub(crate) fn include_dirs() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("KILN_CUDA_INCLUDE") {
        let dirs = split_dirs(&list.to_string_lossy());
        if !dirs.is_empty() {
            return dirs;
        }
    }
    let mut roots = Vec::new();
    if let Some(home) = std::env::var_os("CUDA_HOME").filter(|h| !h.is_empty()) {
        roots.push(PathBuf::from(home).join("include"));
    }
    roots.push(PathBuf::from("/usr/local/cuda/include"));
    let mut dirs = Vec::new();
    for root in roots {
        for d in [root.clone(), root.join("cccl")] {
            if d.is_dir() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

fn options(arch: &str, includes: &[PathBuf]) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    opts.extend(
        includes
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );
    opts
}

/// Destroys the program on every path out of [`compile_cubin`].
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program came from create_program and is destroyed exactly once, here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn program_log(prog: &Program) -> String {
    // SAFETY: `prog` is a live program (destroyed only on drop).
    match unsafe { result::get_program_log(prog.0) } {
        Ok(log) => {
            let bytes: Vec<u8> = log
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).trim_end().to_string()
        }
        Err(e) => format!("(no log: {e:?})"),
    }
}

/// Compiles `src` (program name `<name>.cu` in messages) to a cubin for `arch` (`"sm_90a"`).
/// On failure the `Err` holds NVRTC's log.
pub(crate) fn compile_cubin(name: &str, src: &str, arch: &str) -> Result<Vec<u8>, String> {
    compile_with(name, src, arch, &include_dirs())
}

fn compile_with(
    name: &str,
    src: &str,
    arch: &str,
    includes: &[PathBuf],
) -> Result<Vec<u8>, String> {
    if !arch.starts_with("sm_") {
        return Err(format!(
            "a cubin needs a real architecture such as sm_90a, not `{arch}`"
        ));
    }
    nvrtc_available()?;
    let c_src = CString::new(src).map_err(|_| format!("{name}.cu contains a NUL byte"))?;
    let c_name =
        CString::new(format!("{name}.cu")).map_err(|_| format!("bad source name {name:?}"))?;
    let prog = Program(
        result::create_program(&c_src, Some(&c_name))
            .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?,
    );
    let opts = options(arch, includes);
    // SAFETY: `prog` is live; `c_src` and `c_name`, which it may point into, outlive it.
    if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
        return Err(format!(
            "{e:?} compiling {name}.cu ({}):\n{}",
            opts.join(" "),
            program_log(&prog)
        ));
    }
    let mut size = 0usize;
    // SAFETY: `prog` is live and compiled; `size` is valid for one write.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize for {name}.cu: {e:?}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported for this program.
    unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN for {name}.cu: {e:?}"))?;
    if cubin.is_empty() {
        return Err(format!(
            "NVRTC returned an empty cubin for {name}.cu ({arch})"
        ));
    }
    Ok(cubin)
}

/// 64-bit FNV-1a: stable across Rust releases and platforms, unlike `DefaultHasher`.
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Bumped when the cache file format or anything else the key misses changes.
const CACHE_FORMAT: &[u8] = b"kiln-cubin-v1";
const MAGIC: &[u8; 8] = b"KILNCUB1";
const HEADER: usize = 8 + 8 + 8; // magic, payload length, payload hash (little endian)

fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KILN_KERNEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln").join("kernels")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kiln").join("kernels")))
}

fn cache_key(src: &str, arch: &str, version: (i32, i32), opts: &[String]) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, CACHE_FORMAT);
    for part in [
        src.as_bytes(),
        arch.as_bytes(),
        format!("{}.{}", version.0, version.1).as_bytes(),
    ] {
        h = fnv1a(fnv1a(h, part), &[0]);
    }
    for o in opts {
        h = fnv1a(fnv1a(h, o.as_bytes()), &[0]);
    }
    h
}

/// The cubin in a cache file's bytes, if the header and payload check out.
fn decode_entry(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() <= HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let hash = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    let payload = &bytes[HEADER..];
    (payload.len() as u64 == len && fnv1a(FNV_OFFSET, payload) == hash).then_some(payload)
}

fn encode_entry(cubin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + cubin.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(FNV_OFFSET, cubin).to_le_bytes());
    out.extend_from_slice(cubin);
    out
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let file = path
        .file_name()
        .map_or_else(|| "cubin".into(), |f| f.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file}.{}.{nanos}.tmp", std::process::id()));
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// [`compile_cubin`] through the disk cache (see the module doc): a valid cached cubin is
/// returned as is; otherwise the source is compiled and the result stored, best effort.
pub(crate) fn cached_cubin(name: &str, src: &str, arch: &str) -> Result<Vec<u8>, String> {
    cached_cubin_in(cache_dir().as_deref(), name, src, arch)
}

fn cached_cubin_in(
    dir: Option<&Path>,
    name: &str,
    src: &str,
    arch: &str,
) -> Result<Vec<u8>, String> {
    let includes = include_dirs();
    let Some(dir) = dir else {
        return compile_with(name, src, arch, &includes);
    };
    let version = nvrtc_version()?;
    let key = cache_key(src, arch, version, &options(arch, &includes));
    let path = dir.join(format!("{name}-{arch}-{key:016x}.cubin"));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Some(cubin) = decode_entry(&bytes) {
            return Ok(cubin.to_vec());
        }
    }
    let cubin = compile_with(name, src, arch, &includes)?;
    // A read-only or full cache only costs the next process a recompile.
    let _ = write_atomic(&path, &encode_entry(&cubin));
    Ok(cubin)
}

/// The kernels (defined global functions) in an ELF cubin's symbol table, sorted.
pub(crate) fn cubin_kernels(cubin: &[u8]) -> Result<Vec<String>, String> {
    let bad = |what: &str| format!("malformed cubin: {what}");
    let u16_at = |o: usize| {
        cubin
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        cubin
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize)
    };
    let u64_at = |o: usize| {
        cubin
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    // ELF64, little endian.
    if cubin.len() < 64 || &cubin[..4] != b"\x7fELF" || cubin[4] != 2 || cubin[5] != 1 {
        return Err(bad("not a little-endian ELF64 file"));
    }
    let shoff = u64_at(0x28).ok_or_else(|| bad("header"))?;
    let shentsize = u16_at(0x3a).ok_or_else(|| bad("header"))?;
    let shnum = u16_at(0x3c).ok_or_else(|| bad("header"))?;
    let section = |i: usize| -> Option<(usize, usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        // (type, offset, size, link)
        Some((
            u32_at(h + 4)?,
            u64_at(h + 24)?,
            u64_at(h + 32)?,
            u32_at(h + 40)?,
        ))
    };
    let mut names = Vec::new();
    for i in 0..shnum {
        let (kind, off, size, link) = section(i).ok_or_else(|| bad("section header"))?;
        if kind != 2 {
            continue; // SHT_SYMTAB only
        }
        let (_, str_off, str_size, _) = section(link).ok_or_else(|| bad("string table header"))?;
        let strtab = cubin
            .get(str_off..str_off + str_size)
            .ok_or_else(|| bad("string table"))?;
        let syms = cubin
            .get(off..off + size)
            .ok_or_else(|| bad("symbol table"))?;
        for sym in syms.chunks_exact(24) {
            let (info, shndx) = (sym[4], u16::from_le_bytes([sym[6], sym[7]]));
            // STT_FUNC, STB_GLOBAL, defined
            if info & 0xf != 2 || info >> 4 != 1 || shndx == 0 {
                continue;
            }
            let at = u32::from_le_bytes([sym[0], sym[1], sym[2], sym[3]]) as usize;
            let rest = strtab.get(at..).ok_or_else(|| bad("symbol name"))?;
            let end = rest
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(|| bad("symbol name"))?;
            names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Compiles every embedded source for `arch` (no GPU needed) and checks that its cubin defines
/// exactly the kernels `kernels::kernel_names` lists. Returns (source name, cubin size, seconds).
pub(crate) fn compile_and_check_all(arch: &str) -> Result<Vec<(String, usize, f64)>, String> {
    nvrtc_available()?;
    let mut out = Vec::new();
    for s in super::kernels::SOURCES {
        let t0 = std::time::Instant::now();
        let cubin = compile_cubin(s.name, s.src, arch).map_err(|log| {
            format!(
                "kernel source `{}` does not compile for {arch}: {log}",
                s.name
            )
        })?;
        let secs = t0.elapsed().as_secs_f64();
        let have = cubin_kernels(&cubin).map_err(|e| format!("{}.cu: {e}", s.name))?;
        let mut want = super::kernels::kernel_names(s.name);
        want.sort();
        let missing: Vec<_> = want.iter().filter(|n| !have.contains(n)).collect();
        let extra: Vec<_> = have.iter().filter(|n| !want.contains(n)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(format!(
                "{}.cu for {arch}: kernels missing from the cubin {missing:?}, not listed in kernels.rs {extra:?}",
                s.name
            ));
        }
        out.push((s.name.to_string(), cubin.len(), secs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"
#include <cuda_fp16.h>
extern "C" __global__ void kiln_tiny(const __half* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = expf(__half2float(x[i]));
}
"#;

    /// Whether NVRTC is here; prints why a test is skipped when it is not.
    fn have_nvrtc(test: &str) -> bool {
        match nvrtc_available() {
            Ok(()) => true,
            Err(why) => {
                println!("skipping {test}: {why}");
                false
            }
        }
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-nvrtc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cache_entries_round_trip_and_reject_damage() {
        let cubin = b"\x7fELF some cubin bytes".to_vec();
        let e = encode_entry(&cubin);
        assert_eq!(decode_entry(&e), Some(&cubin[..]));
        assert_eq!(decode_entry(&e[..e.len() - 1]), None, "short file");
        let mut bad = e.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(decode_entry(&bad), None, "flipped byte");
        assert_eq!(decode_entry(&e[..HEADER]), None, "header only");
        assert_eq!(decode_entry(b""), None);
    }

    #[test]
    fn include_lists_split_on_colons() {
        assert_eq!(
            split_dirs("/a:/b/c::"),
            vec![PathBuf::from("/a"), PathBuf::from("/b/c")]
        );
        assert!(split_dirs("").is_empty());
    }

    #[test]
    fn virtual_arch_is_refused() {
        let e = compile_cubin("tiny", TINY, "compute_90").unwrap_err();
        assert!(e.contains("real architecture"), "{e}");
    }

    #[test]
    fn compiles_a_kernel_to_a_cubin() {
        if !have_nvrtc("compiles_a_kernel_to_a_cubin") {
            return;
        }
        let (major, _) = nvrtc_version().unwrap();
        assert!(major >= 12, "NVRTC {major}");
        let cubin = compile_cubin("tiny", TINY, "sm_90a").unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF");
        assert!(cubin.windows(9).any(|w| w == b"kiln_tiny"));
    }

    #[test]
    fn compile_errors_carry_the_log() {
        if !have_nvrtc("compile_errors_carry_the_log") {
            return;
        }
        let e = compile_cubin(
            "broken",
            "extern \"C\" __global__ void f() { undeclared_thing(); }",
            "sm_90a",
        )
        .unwrap_err();
        assert!(
            e.contains("undeclared_thing") && e.contains("broken.cu"),
            "{e}"
        );
    }

    #[test]
    fn cache_hits_and_recompiles_damaged_files() {
        if !have_nvrtc("cache_hits_and_recompiles_damaged_files") {
            return;
        }
        let dir = scratch_dir("cache");
        let first = cached_cubin_in(Some(&dir), "tiny", TINY, "sm_90a").unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "one entry, no temporary left: {files:?}");
        let path = &files[0];
        assert_eq!(
            decode_entry(&std::fs::read(path).unwrap()),
            Some(&first[..])
        );

        // A hit returns the stored bytes: plant a different valid entry and read it back.
        std::fs::write(path, encode_entry(b"planted")).unwrap();
        assert_eq!(
            cached_cubin_in(Some(&dir), "tiny", TINY, "sm_90a").unwrap(),
            b"planted"
        );

        // A truncated entry is recompiled and rewritten.
        std::fs::write(path, &encode_entry(&first)[..100]).unwrap();
        assert_eq!(
            cached_cubin_in(Some(&dir), "tiny", TINY, "sm_90a").unwrap(),
            first
        );
        assert_eq!(
            decode_entry(&std::fs::read(path).unwrap()),
            Some(&first[..])
        );

        // Another arch is another entry.
        cached_cubin_in(Some(&dir), "tiny", TINY, "sm_80").unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);

        // An unwritable cache still returns the cubin.
        let blocker = dir.join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        assert_eq!(
            cached_cubin_in(Some(&blocker), "tiny", TINY, "sm_90a").unwrap(),
            first
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
