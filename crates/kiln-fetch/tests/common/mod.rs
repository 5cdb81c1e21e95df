//! Test helpers: a tiny HTTP/1.1 file server on loopback and self-deleting temp directories.
//!
//! The server maps `GET /a/b` to `<root>/a/b`, answers 404 for missing files, and follows three
//! markers beside a file: `<file>.redirect` (its contents are a Location to 302 to),
//! `<file>.truncate` (announce 1000 bytes more than it sends, then hang up), and paths under
//! `/gated/` need `Authorization: Bearer <TOKEN>`. Every request is logged with its
//! Authorization header.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub const TOKEN: &str = "test-token";

/// (path, Authorization header) of each request, in arrival order.
pub type Log = Vec<(String, Option<String>)>;

pub struct Server {
    pub url: String,
    pub root: PathBuf,
    pub log: Arc<Mutex<Log>>,
}

impl Server {
    /// Requests whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<(String, Option<String>)> {
        let log = self.log.lock().expect("log lock poisoned");
        log.iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write fixture");
    }
}

/// The one server of this test binary. Starting it points `HF_ENDPOINT`, `HF_TOKEN` and
/// `KILN_PYPI_URL` at it, once, before any test reads them.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fetch-srv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("server root");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (root2, log2) = (root.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, log) = (root2.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &log);
                });
            }
        });
        std::env::set_var("HF_ENDPOINT", &url);
        std::env::set_var("HF_TOKEN", TOKEN);
        std::env::set_var("KILN_PYPI_URL", format!("{url}/pypi"));
        Server { url, root, log }
    })
}

fn serve(stream: TcpStream, root: &Path, log: &Mutex<Log>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    log.lock()
        .expect("log lock poisoned")
        .push((path.clone(), auth.clone()));
    let mut out = stream;
    let file = root.join(path.trim_start_matches('/'));
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", file.display()));
    if path.starts_with("/gated/") && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return respond(&mut out, "401 Unauthorized", b"no", None);
    }
    if let Ok(location) = std::fs::read_to_string(with(".redirect")) {
        let head = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return out.write_all(head.as_bytes());
    }
    let Ok(body) = std::fs::read(&file) else {
        return respond(&mut out, "404 Not Found", b"Entry not found", None);
    };
    let announced = with(".truncate").exists().then(|| body.len() + 1000);
    respond(&mut out, "200 OK", &body, announced)
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    body: &[u8],
    announced: Option<usize>,
) -> std::io::Result<()> {
    let len = announced.unwrap_or(body.len());
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("kiln-fetch-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("test dir");
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// All files under `dir`, relative, sorted (to assert nothing extra, e.g. `.part`, was left).
pub fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(
                    p.strip_prefix(base)
                        .expect("under base")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A [`kiln_fetch::Progress`] that records what it was told.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<String>>,
    pub bytes: AtomicU64,
}

impl kiln_fetch::Progress for Recorder {
    fn start(&self, what: &str, total: Option<u64>) {
        self.events
            .lock()
            .expect("lock")
            .push(format!("start {what} {total:?}"));
    }
    fn advance(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn finish(&self) {
        self.events.lock().expect("lock").push("finish".to_string());
    }
}
