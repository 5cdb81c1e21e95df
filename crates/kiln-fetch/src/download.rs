//! HTTP GETs and the temp-file discipline shared by the PyPI and hub sources.
//!
//! Every body streams into a [`TempFile`] (`.<name>.<pid>.<n>.part` in the destination's
//! directory, so the final rename stays on one filesystem and is atomic) that deletes itself
//! when dropped: an error or a panic midway leaves no file under the final name, and a killed
//! process leaves only a `.part` file that nothing reads. Length (from `Content-Length`) and,
//! when known, sha256 are checked before a file is handed on.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use crate::{Error, Progress, Result};

/// JSON documents we read (PyPI metadata, safetensors indexes) are small; a cap keeps a wrong
/// URL from filling memory.
const JSON_LIMIT: u64 = 64 << 20;

/// One agent per top-level fetch. No overall timeout (a model is hundreds of MB on a slow
/// link); instead connecting and every single read must make progress within a bound.
pub(crate) fn agent() -> Result<ureq::Agent> {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(root_certs()?)
        .build();
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .new_agent())
}

/// Trust what the system trusts, like curl and pip: `$SSL_CERT_FILE` if set, else the
/// distribution's CA bundle; only where there is none, the Mozilla roots compiled into ureq.
/// Bundled roots alone would break every user behind a TLS-inspecting proxy whose CA the
/// administrator installed system-wide. Rejected: ureq's `platform-verifier` feature, which
/// does the same through three more crates.
fn root_certs() -> Result<ureq::tls::RootCerts> {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch, Alpine
        "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
        "/etc/ssl/ca-bundle.pem",             // openSUSE
        "/etc/ssl/cert.pem",                  // macOS, BSDs
    ];
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        let path = PathBuf::from(file);
        let certs = read_pem_certs(&path).map_err(|e| io_err(&path, e))?;
        if certs.is_empty() {
            return Err(io_err(
                &path,
                io::Error::other("SSL_CERT_FILE holds no PEM certificates"),
            ));
        }
        return Ok(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    for bundle in BUNDLES {
        match read_pem_certs(Path::new(bundle)) {
            Ok(certs) if !certs.is_empty() => {
                return Ok(ureq::tls::RootCerts::new_with_certs(&certs))
            }
            _ => continue,
        }
    }
    Ok(ureq::tls::RootCerts::WebPki)
}

fn read_pem_certs(path: &Path) -> io::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A malformed entry in a system bundle should not make every download fail.
        if let Ok(ureq::tls::PemItem::Certificate(cert)) = item {
            certs.push(cert);
        }
    }
    Ok(certs)
}

/// GET `url`, optionally with a bearer token, and turn non-2xx statuses into errors.
/// Redirects are followed; ureq drops the `Authorization` header on them, which is what the
/// hub's signed CDN redirects expect.
pub(crate) fn get(agent: &ureq::Agent, url: &str, bearer: Option<&str>) -> Result<Response<Body>> {
    let mut req = agent.get(url);
    if let Some(token) = bearer {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let resp = req.call().map_err(|e| Error::Http {
        url: url.to_string(),
        source: Box::new(e),
    })?;
    let status = resp.status().as_u16();
    match status {
        200..=299 => Ok(resp),
        404 => Err(Error::NotFound {
            url: url.to_string(),
        }),
        401 | 403 => Err(Error::Status {
            url: url.to_string(),
            status,
            hint: " (missing, private or gated: set HF_TOKEN to a token with access)",
        }),
        _ => Err(Error::Status {
            url: url.to_string(),
            status,
            hint: "",
        }),
    }
}

/// GET `url` and parse its body as JSON.
pub(crate) fn get_json(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
) -> Result<serde_json::Value> {
    let mut resp = get(agent, url, bearer)?;
    let text = resp
        .body_mut()
        .with_config()
        .limit(JSON_LIMIT)
        .read_to_string()
        .map_err(|e| Error::Http {
            url: url.to_string(),
            source: Box::new(e),
        })?;
    serde_json::from_str(&text).map_err(|e| Error::BadResponse {
        url: url.to_string(),
        what: format!("invalid JSON: {e}"),
    })
}

/// Read a JSON file from disk (a cached safetensors index).
pub(crate) fn read_json_file(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadResponse {
        url: path.display().to_string(),
        what: format!("invalid JSON: {e}"),
    })
}

/// Stream `url` into a new temp file in `dir`, reporting progress as `what`; check the length
/// against `Content-Length` and the digest against `sha256` (lowercase hex) when given.
pub(crate) fn download_temp(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
    sha256: Option<&str>,
    dir: &Path,
    what: &str,
    progress: &dyn Progress,
) -> Result<TempFile> {
    let mut resp = get(agent, url, bearer)?;
    let total = resp.body().content_length();
    let mut tmp = TempFile::new(dir, what)?;
    progress.start(what, total);
    let copied = copy_hashing(&mut resp.body_mut().as_reader(), &mut tmp, progress);
    progress.finish();
    let (got, digest) = copied.map_err(|e| match e {
        CopyError::Read(e) => Error::BadResponse {
            url: url.to_string(),
            what: format!("reading body: {e}"),
        },
        CopyError::Write(e) => io_err(&tmp.path, e),
    })?;
    tmp.flush()?;
    if let Some(expected) = total {
        if got != expected {
            return Err(Error::Truncated {
                url: url.to_string(),
                got,
                expected,
            });
        }
    }
    if let Some(expected) = sha256 {
        if !digest.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum {
                url: url.to_string(),
                expected: expected.to_string(),
                actual: digest,
            });
        }
    }
    Ok(tmp)
}

/// [`download_temp`] into `dest`'s directory, then rename onto `dest`.
pub(crate) fn download_to(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
    dest: &Path,
    what: &str,
    progress: &dyn Progress,
) -> Result<()> {
    let dir = parent_of(dest);
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    download_temp(agent, url, bearer, None, dir, what, progress)?.persist(dest)
}

pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy `src` to `dst` in 1 MiB chunks, reporting each to `progress`; returns bytes copied and
/// their sha256 as lowercase hex.
pub(crate) fn copy_hashing(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    progress: &dyn Progress,
) -> std::result::Result<(u64, String), CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut n_total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(CopyError::Write)?;
        n_total += n as u64;
        progress.advance(n as u64);
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((n_total, digest))
}

pub(crate) fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory a file lives in (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A unique `.part` name in `dir` for something that will be called `name`.
pub(crate) fn part_path(dir: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!(".{safe}.{}.{n}.part", std::process::id()))
}

/// A file being written, deleted on drop unless [`TempFile::persist`]ed.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl TempFile {
    pub(crate) fn new(dir: &Path, name: &str) -> Result<Self> {
        let path = part_path(dir, name);
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        Ok(Self {
            path,
            file: Some(BufWriter::new(file)),
        })
    }

    /// Flush buffered bytes and close the file (it stays on disk until dropped or persisted).
    pub(crate) fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.file.take() {
            let file = w
                .into_inner()
                .map_err(|e| io_err(&self.path, e.into_error()))?;
            file.sync_all().map_err(|e| io_err(&self.path, e))?;
        }
        Ok(())
    }

    /// Atomically move the finished file to `dest`.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        self.flush()?;
        std::fs::rename(&self.path, dest).map_err(|e| io_err(dest, e))?;
        // Renamed: nothing left to delete on drop.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("temp file already closed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A directory being filled, removed (with its contents) on drop unless [`TempDir::persist`]ed.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(parent: &Path, name: &str) -> Result<Self> {
        let path = part_path(parent, name);
        std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
        Ok(Self { path })
    }

    /// Atomically move `sub` (a path inside this directory, or the directory itself) to `dest`,
    /// which must not exist.
    pub(crate) fn persist_sub(self, sub: &Path, dest: &Path) -> Result<()> {
        std::fs::rename(sub, dest).map_err(|e| io_err(dest, e))
        // `self` drops here and removes whatever is left of the staging directory.
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
