//! Worker threads: each runs a single-threaded runtime with its own connection pools; the
//! control runtime (admin, health checks, DNS, timers) runs apart so a busy data path never
//! starves it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::SeedableRng;

static CONTROL: OnceLock<tokio::runtime::Handle> = OnceLock::new();
static SLOTS: OnceLock<usize> = OnceLock::new();

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// Records the control runtime and the number of workers; called once at start.
pub fn init(control: tokio::runtime::Handle, workers: usize) {
    let _ = CONTROL.set(control);
    let _ = SLOTS.set(workers + 1);
}

/// Pool slots per host: one per worker, plus one shared by every other thread.
pub fn pool_slots() -> usize {
    *SLOTS.get().unwrap_or(&1)
}

/// Marks the calling thread as worker `id` (1-based; 0 is "not a worker").
pub fn set_current(id: usize) {
    WORKER.with(|w| w.set(id));
}

pub fn current() -> usize {
    WORKER.with(|w| w.get())
}

pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// Spawns on the control runtime (or the current one before `init`, as in unit tests).
pub fn spawn_control<F>(fut: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    match CONTROL.get() {
        Some(h) => h.spawn(fut),
        None => tokio::spawn(fut),
    }
}
