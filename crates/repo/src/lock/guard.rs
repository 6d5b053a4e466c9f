//! [`LockGuard`]: a held lock, its heartbeat thread, and the lease rule (a holder that went more
//! than half the stale time without renewing must not act on the lock any more).

use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use jiff::Timestamp;

use super::{LockManager, LockRecord, sd};
use crate::backend::{ObjectPath, PutMode};
use crate::error::{Error, Result};

#[derive(Debug)]
struct GuardState {
    record: LockRecord,
    last_renewed: Timestamp,
    lost: Option<String>,
    released: bool,
}

#[derive(Debug)]
struct GuardInner {
    manager: LockManager,
    path: ObjectPath,
    state: Mutex<GuardState>,
}

impl GuardInner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn renew(&self) -> Result<()> {
        let now = self.manager.clock.now();
        let mut st = self.lock_state();
        if st.released {
            return Err(Error::InvalidArgument("lock already released".into()));
        }
        if let Some(reason) = &st.lost {
            return Err(Error::LeaseLost {
                backup: self.what(&st.record),
                reason: reason.clone(),
            });
        }
        let lease = self.manager.stale_after() / 2;
        let gap = now.duration_since(st.last_renewed);
        let lost = if gap > lease {
            Some(format!(
                "the lock was not renewed for {}s (limit {}s); it may have been declared stale",
                gap.as_secs(),
                lease.as_secs()
            ))
        } else {
            match self.manager.read(&self.path)? {
                Some(Ok(r)) if r.token == st.record.token => None,
                Some(_) => Some("the lock file now belongs to another process".into()),
                None => Some("the lock file was removed (declared stale)".into()),
            }
        };
        if let Some(reason) = lost {
            st.lost = Some(reason.clone());
            return Err(Error::LeaseLost {
                backup: self.what(&st.record),
                reason,
            });
        }
        st.record.heartbeat = now;
        let bytes =
            serde_json::to_vec(&st.record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.manager
            .backend
            .put(&self.path, &bytes, PutMode::Overwrite)?;
        st.last_renewed = now;
        Ok(())
    }

    fn what(&self, record: &LockRecord) -> String {
        record
            .backup
            .as_ref()
            .map_or_else(|| self.path.to_string(), ToString::to_string)
    }

    fn release(&self) -> Result<()> {
        let mut st = self.lock_state();
        if st.released {
            return Ok(());
        }
        st.released = true;
        match self.manager.read(&self.path)? {
            Some(Ok(r)) if r.token == st.record.token => self.manager.backend.delete(&self.path),
            _ => Ok(()),
        }
    }
}

/// A held lock. Released on [`LockGuard::release`] or drop (best effort); a background thread
/// renews it when the settings ask for one.
#[derive(Debug)]
pub struct LockGuard {
    inner: Arc<GuardInner>,
    heartbeat: Option<(Sender<()>, JoinHandle<()>)>,
}

impl LockGuard {
    pub(super) fn new(manager: LockManager, path: ObjectPath, record: LockRecord) -> LockGuard {
        let interval = manager.settings.heartbeat_interval;
        let now = record.heartbeat;
        let inner = Arc::new(GuardInner {
            manager,
            path,
            state: Mutex::new(GuardState {
                record,
                last_renewed: now,
                lost: None,
                released: false,
            }),
        });
        let heartbeat = interval.and_then(|every| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("vbm-lock-heartbeat".into())
                .spawn(move || {
                    loop {
                        match rx.recv_timeout(every) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        if let Err(e) = inner.renew() {
                            tracing::warn!(lock = %inner.path, error = %e, "lock heartbeat failed");
                            if matches!(e, Error::LeaseLost { .. }) {
                                return;
                            }
                        }
                    }
                })
                .ok()
                .map(|handle| (tx, handle))
        });
        LockGuard { inner, heartbeat }
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &ObjectPath {
        &self.inner.path
    }

    /// Renews the heartbeat, checking that the lease was never lost.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lock went unrenewed for more than half the stale time or
    /// was removed or replaced; I/O errors.
    pub fn renew(&self) -> Result<()> {
        self.inner.renew()
    }

    /// Renews if the last renewal is older than the heartbeat interval (or than a quarter of
    /// the stale time when there is no background heartbeat).
    ///
    /// # Errors
    /// As [`LockGuard::renew`].
    pub fn renew_if_due(&self) -> Result<()> {
        let settings = &self.inner.manager.settings;
        let due = settings
            .heartbeat_interval
            .map_or_else(|| sd(settings.stale_after) / 4, sd);
        let last = self.inner.lock_state().last_renewed;
        if self.inner.manager.clock.now().duration_since(last) >= due {
            self.renew()
        } else {
            Ok(())
        }
    }

    /// Releases the lock (deleting the file if it is still ours).
    ///
    /// # Errors
    /// I/O errors deleting the lock file.
    pub fn release(mut self) -> Result<()> {
        self.stop_heartbeat();
        self.inner.release()
    }

    fn stop_heartbeat(&mut self) {
        if let Some((tx, handle)) = self.heartbeat.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if let Err(e) = self.inner.release() {
            tracing::warn!(lock = %self.inner.path, error = %e, "could not release a lock");
        }
    }
}
