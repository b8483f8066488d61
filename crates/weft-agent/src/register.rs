//! Keeping one instance registered: PUT it under a lease, renew the lease every heartbeat, PUT
//! it again when its health verdict changes or the control plane lost it; retry with backoff
//! while the control plane is unreachable. Deregistration (DELETE) is the caller's, on stop.

use std::time::Duration;

use tokio::sync::watch;
use weft_istio::registry::Instance;

use crate::api::Api;
use crate::backoff::Backoff;
use crate::status::{now_unix_ms, Shared};

/// First retry after a failed call.
pub const RETRY_INITIAL: Duration = Duration::from_millis(250);
/// Longest wait between retries (also never more than the heartbeat).
pub const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct Registration {
    pub api: Api,
    /// The instance as registered when healthy; `healthy` is set from the verdict.
    pub instance: Instance,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
    /// The health verdict (None until the first check); always `Some(true)` without a check.
    pub health: watch::Receiver<Option<bool>>,
    pub status: Shared,
    /// The service's place in the status document.
    pub index: usize,
}

enum Outcome {
    Put { revision: u64, expires: Option<u64> },
    Renewed { expires: Option<u64> },
    Gone,
}

impl Registration {
    /// Runs until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let (ns, name) = (self.instance.namespace.clone(), self.instance.name.clone());
        // The first registration carries the first verdict.
        while self.health.borrow().is_none() {
            tokio::select! {
                r = self.health.changed() => if r.is_err() { break },
                _ = crate::stopped(&mut stop) => return,
            }
        }
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX.min(self.heartbeat));
        let mut registered = false;
        let mut sent: Option<bool> = None;
        let mut health_open = true;
        loop {
            let healthy = self.health.borrow_and_update().unwrap_or(true);
            let result = if !registered || sent != Some(healthy) {
                self.instance.healthy = healthy;
                self.api
                    .put_instance(&ns, &name, &self.instance, self.lease_ttl)
                    .await
                    .map(|r| Outcome::Put { revision: r.revision, expires: r.lease_expires_unix_ms })
            } else {
                self.api.renew(&ns, &name, self.lease_ttl).await.map(|r| match r {
                    Some(r) => Outcome::Renewed { expires: r.lease_expires_unix_ms },
                    None => Outcome::Gone,
                })
            };
            let wait = match result {
                Ok(Outcome::Put { revision, expires }) => {
                    if !registered {
                        tracing::info!(instance = %format!("{ns}/{name}"), revision, healthy, "registered");
                    } else {
                        tracing::info!(instance = %format!("{ns}/{name}"), revision, healthy, "health reported");
                    }
                    registered = true;
                    sent = Some(healthy);
                    backoff.reset();
                    self.status.update(|s| {
                        if let Some(r) = s.services.get_mut(self.index).map(|s| &mut s.registration) {
                            r.state = "registered".into();
                            r.revision = revision;
                            r.lease_expires_unix_ms = expires;
                            r.last_renewal_unix_ms = Some(now_unix_ms());
                            r.healthy_registered = Some(healthy);
                            r.last_error = None;
                            r.consecutive_failures = 0;
                        }
                    });
                    self.heartbeat
                }
                Ok(Outcome::Renewed { expires }) => {
                    backoff.reset();
                    self.status.update(|s| {
                        if let Some(r) = s.services.get_mut(self.index).map(|s| &mut s.registration) {
                            r.lease_expires_unix_ms = expires;
                            r.last_renewal_unix_ms = Some(now_unix_ms());
                            r.last_error = None;
                            r.consecutive_failures = 0;
                        }
                    });
                    self.heartbeat
                }
                Ok(Outcome::Gone) => {
                    tracing::warn!(instance = %format!("{ns}/{name}"), "the control plane no longer has this instance (lease expired?); registering again");
                    registered = false;
                    self.status.update(|s| {
                        if let Some(r) = s.services.get_mut(self.index).map(|s| &mut s.registration) {
                            r.state = "registering".into();
                            r.lease_expires_unix_ms = None;
                        }
                    });
                    Duration::ZERO
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let message = e.to_string();
                    let failures = {
                        let mut n = 0;
                        self.status.update(|s| {
                            if let Some(r) = s.services.get_mut(self.index).map(|s| &mut s.registration) {
                                r.last_error = Some(message.clone());
                                r.consecutive_failures += 1;
                                n = r.consecutive_failures;
                            }
                        });
                        n
                    };
                    // Logged on the first failure and then every tenth, not on every retry.
                    if failures == 1 || failures % 10 == 0 {
                        tracing::warn!(instance = %format!("{ns}/{name}"), error = %message, failures, retry_ms = delay.as_millis() as u64, "control plane call failed; retrying");
                    }
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = self.health.changed(), if health_open => {
                    if r.is_err() {
                        health_open = false;
                    }
                }
                _ = crate::stopped(&mut stop) => return,
            }
        }
    }
}
