//! [`EngineHandle`]: the thread-safe front of the step loop, and [`RequestStream`], one
//! request's events.
//!
//! Submission is a short critical section on a mutex-guarded inbox plus a condvar to wake an idle
//! loop; the loop drains the inbox at the start of each step. Events go back through a tokio
//! unbounded channel per request, whose sender never blocks the loop and whose receiver works
//! from both plain threads (`recv`) and async tasks (`next`). A dropped receiver is how the loop
//! learns of a cancellation (`UnboundedSender::is_closed`), so cancelling needs no extra message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use super::step_loop;
use super::{EngineConfig, EngineStats, Event, GenerateRequest, SubmitError, MAX_LOGPROBS};
use crate::{Engine, Error, Result};

/// A request accepted by `submit`, not yet seen by the loop.
pub(super) struct Pending {
    pub id: u64,
    pub req: GenerateRequest,
    pub tx: mpsc::UnboundedSender<Event>,
    pub arrival: Instant,
}

#[derive(Default)]
pub(super) struct Inbox {
    pub new: Vec<Pending>,
    /// Requests accepted and not yet running (inbox + the loop's waiting queue); the loop
    /// decrements it as it admits or drops them.
    pub waiting: usize,
    pub shutting_down: bool,
    /// Set by the loop thread as it exits (also on a panic), so `shutdown` can wait for it.
    pub exited: bool,
}

/// State shared by every handle clone and the loop thread.
pub(super) struct Shared {
    pub inbox: Mutex<Inbox>,
    /// Signalled on a new request, on shutdown, and when the loop exits.
    pub wake: Condvar,
    pub stats: Mutex<EngineStats>,
}

impl Shared {
    /// Locks the inbox; a poisoned lock (a panic while holding it) still holds consistent
    /// counters, since every critical section is a few field updates.
    pub fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> MutexGuard<'_, EngineStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owned by the handle clones: the last one dropped asks the loop to shut down.
struct HandleInner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    max_context: usize,
    max_waiting: usize,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shared.inbox().shutting_down = true;
        self.shared.wake.notify_all();
    }
}

/// A cheap, cloneable handle to a running engine (`Send + Sync`).
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<HandleInner>,
}

impl EngineHandle {
    /// Checks `cfg` and starts the step loop on a thread named `kiln-engine`.
    pub fn start(engine: Arc<Engine>, cfg: EngineConfig) -> Result<EngineHandle> {
        let n_blocks = step_loop::check_config(&engine, &cfg)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            stats: Mutex::new(EngineStats {
                kv_blocks_total: n_blocks,
                kv_blocks_free: n_blocks,
                ..EngineStats::default()
            }),
        });
        let max_context = engine.info.max_context;
        let max_waiting = cfg.max_waiting;
        let loop_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || step_loop::run(&engine, &cfg, n_blocks, &loop_shared))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            inner: Arc::new(HandleInner {
                shared,
                thread: Mutex::new(Some(thread)),
                next_id: AtomicU64::new(0),
                max_context,
                max_waiting,
            }),
        })
    }

    /// Queues a request. Checks run here, so a bad request is refused before it is queued.
    pub fn submit(&self, req: GenerateRequest) -> std::result::Result<RequestStream, SubmitError> {
        let inner = &self.inner;
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() >= inner.max_context {
            return Err(SubmitError::PromptTooLong {
                n_tokens: req.prompt.len(),
                max_context: inner.max_context,
            });
        }
        req.params
            .validate()
            .map_err(|e| SubmitError::InvalidParams(e.to_string()))?;
        if let Some(n) = req.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(SubmitError::InvalidParams(format!(
                "logprobs = {n}: at most {MAX_LOGPROBS} alternatives per token"
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut inbox = inner.shared.inbox();
            if inbox.shutting_down {
                return Err(SubmitError::ShuttingDown);
            }
            if inbox.waiting >= inner.max_waiting {
                return Err(SubmitError::QueueFull);
            }
            inbox.waiting += 1;
            inbox.new.push(Pending {
                id,
                req,
                tx,
                arrival: Instant::now(),
            });
        }
        inner.shared.wake.notify_all();
        Ok(RequestStream { id, rx })
    }

    /// A snapshot of the counters, as of the end of the last step (`waiting` is current).
    pub fn stats(&self) -> EngineStats {
        let waiting = self.inner.shared.inbox().waiting;
        let mut s = self.inner.shared.stats().clone();
        s.waiting = waiting;
        s
    }

    /// Stops admitting new requests, lets every running and queued request finish, then waits
    /// for the loop thread to exit. Safe to call from several threads and more than once.
    pub fn shutdown(&self) {
        let shared = &self.inner.shared;
        let mut inbox = shared.inbox();
        inbox.shutting_down = true;
        shared.wake.notify_all();
        while !inbox.exited {
            inbox = shared.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
        }
        drop(inbox);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            // The loop has already exited; a panic there was reported to every stream as a
            // closed channel, nothing is left to report here.
            let _ = t.join();
        }
    }
}

/// The events of one request. Dropping it cancels the request.
///
/// Ends with exactly one `Finished` or `Failed`; after that (or if the engine thread died)
/// `recv`/`next` return `None`.
#[derive(Debug)]
pub struct RequestStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl RequestStream {
    /// The engine-wide id of this request (unique per `EngineHandle::start`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Blocks the calling thread until the next event. Panics if called from inside an async
    /// runtime (tokio's rule for `blocking_recv`): use [`next`](Self::next) there.
    pub fn recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Waits for the next event without blocking the async runtime.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already there.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}
