//! A process-wide background runtime for the test servers.
//!
//! Tests are free to block their own runtime (a `#[tokio::test]` is
//! single-threaded by default, and shelling out to `curl` with
//! `std::process::Command` blocks it). If the backends lived on that runtime,
//! such a test would deadlock: the proxy would forward to a backend that is
//! never polled. So every server in this crate runs here instead.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weft-test-server")
            .enable_all()
            .build()
            .expect("build the weft-test background runtime")
    })
}

/// Spawn a task on the background runtime.
pub(crate) fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(fut)
}
