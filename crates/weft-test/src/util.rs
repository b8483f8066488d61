use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `condition` every 20 ms until it returns true or `timeout` passes.
/// Returns whether it became true.
///
/// ```no_run
/// # async fn f(backend: &weft_test::HttpBackend) {
/// use std::time::Duration;
/// assert!(weft_test::wait_for(Duration::from_secs(5), || async { backend.hits() > 0 }).await);
/// # }
/// ```
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
