//! Concurrency limits (global, per vCenter, per host, per job) and the per-VM lock that keeps at
//! most one backup of a VM active (FAULT-MATRIX L2).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::ids::{InstanceUuid, VcenterId};

/// The limits of one server.
#[derive(Debug)]
pub struct Gates {
    global: Arc<Semaphore>,
    per_vcenter: u32,
    per_host: u32,
    vcenters: Mutex<HashMap<VcenterId, Arc<Semaphore>>>,
    hosts: Mutex<HashMap<(VcenterId, String), Arc<Semaphore>>>,
    vms: Mutex<HashSet<(VcenterId, InstanceUuid)>>,
    vm_released: Notify,
}

/// Held while one VM backup runs; releases everything on drop.
#[derive(Debug)]
pub struct Pass {
    _permits: Vec<OwnedSemaphorePermit>,
    vm: Option<(Arc<Gates>, (VcenterId, InstanceUuid))>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some((gates, key)) = self.vm.take() {
            if let Ok(mut vms) = gates.vms.lock() {
                vms.remove(&key);
            }
            gates.vm_released.notify_waiters();
        }
    }
}

fn semaphore<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Arc<Semaphore>>>,
    key: K,
    size: u32,
) -> Arc<Semaphore> {
    match map.lock() {
        Ok(mut m) => Arc::clone(
            m.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(size as usize))),
        ),
        Err(_) => Arc::new(Semaphore::new(size as usize)),
    }
}

impl Gates {
    /// Gates sized by the configuration.
    #[must_use]
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(limits.max_concurrent_backups as usize)),
            per_vcenter: limits.per_vcenter,
            per_host: limits.per_host,
            vcenters: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
            vms: Mutex::new(HashSet::new()),
            vm_released: Notify::new(),
        })
    }

    /// Waits for the lock of one VM only (no slot): what the crash-recovery sweep of a VM's
    /// snapshots holds, so that it never runs beside a backup of that VM. `None` when cancelled.
    pub async fn lock_vm(
        self: &Arc<Self>,
        vcenter: &VcenterId,
        vm: &InstanceUuid,
        cancel: &CancellationToken,
    ) -> Option<Pass> {
        let key = (vcenter.clone(), vm.clone());
        loop {
            let released = self.vm_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let taken = match self.vms.lock() {
                Ok(mut vms) => vms.insert(key.clone()),
                Err(_) => return None,
            };
            if taken {
                break;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = released => {}
            }
        }
        Some(Pass {
            _permits: Vec::new(),
            vm: Some((Arc::clone(self), key)),
        })
    }

    /// Waits for the VM lock, then for a global, a vCenter and a host slot, in that order (a
    /// fixed order: no deadlock). `None` when cancelled while waiting.
    pub async fn enter(
        self: &Arc<Self>,
        vcenter: &VcenterId,
        vm: &InstanceUuid,
        host: Option<&str>,
        cancel: &CancellationToken,
    ) -> Option<Pass> {
        let mut pass = self.lock_vm(vcenter, vm, cancel).await?;
        let mut sems = vec![
            Arc::clone(&self.global),
            semaphore(&self.vcenters, vcenter.clone(), self.per_vcenter),
        ];
        if let Some(h) = host {
            sems.push(semaphore(
                &self.hosts,
                (vcenter.clone(), h.to_owned()),
                self.per_host,
            ));
        }
        for sem in sems {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                permit = sem.acquire_owned() => match permit {
                    Ok(p) => pass._permits.push(p),
                    Err(_) => return None,
                },
            }
        }
        Some(pass)
    }

    /// Whether a backup of this VM is active.
    #[must_use]
    pub fn vm_busy(&self, vcenter: &VcenterId, vm: &InstanceUuid) -> bool {
        self.vms
            .lock()
            .is_ok_and(|vms| vms.contains(&(vcenter.clone(), vm.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers L2: a second backup of the same VM waits for the first.
    #[tokio::test]
    async fn one_backup_per_vm() {
        let gates = Gates::new(&Limits::default());
        let vc = VcenterId::generate();
        let vm = InstanceUuid::generate();
        let cancel = CancellationToken::new();
        let first = gates.enter(&vc, &vm, None, &cancel).await.unwrap();
        assert!(gates.vm_busy(&vc, &vm));
        let g2 = Arc::clone(&gates);
        let (vc2, vm2, c2) = (vc.clone(), vm.clone(), cancel.clone());
        let second = tokio::spawn(async move { g2.enter(&vc2, &vm2, None, &c2).await.is_some() });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        assert!(second.await.unwrap());
    }

    // covers L1: never more than the global limit at once.
    #[tokio::test]
    async fn global_limit_holds() {
        let gates = Gates::new(&Limits {
            max_concurrent_backups: 2,
            per_vcenter: 10,
            per_host: 10,
        });
        let vc = VcenterId::generate();
        let cancel = CancellationToken::new();
        let a = gates
            .enter(&vc, &InstanceUuid::generate(), None, &cancel)
            .await
            .unwrap();
        let _b = gates
            .enter(&vc, &InstanceUuid::generate(), Some("h1"), &cancel)
            .await
            .unwrap();
        let waiting = {
            let g = Arc::clone(&gates);
            let c = cancel.clone();
            let vc = vc.clone();
            tokio::spawn(async move {
                g.enter(&vc, &InstanceUuid::generate(), None, &c)
                    .await
                    .is_some()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert!(waiting.await.unwrap());
        // Cancelling a waiter returns None.
        let c2 = CancellationToken::new();
        c2.cancel();
        assert!(
            gates
                .enter(&vc, &InstanceUuid::generate(), None, &c2)
                .await
                .is_none()
        );
    }
}
