//! A small ordered parallel map: decode chunks on several threads, consume them in file order
//! (for whole-file SHA-256, restore streams and verify) with bounded memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::Result;

/// Runs `work` on every item using up to `threads` threads and hands each result to `sink` in
/// item order. At most about `2 × threads` results are in flight. The first error from `sink`
/// stops the workers and is returned.
///
/// # Errors
/// The first error `sink` returns.
pub(crate) fn ordered_map<T, R, W, S>(
    items: &[T],
    threads: usize,
    work: W,
    mut sink: S,
) -> Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    S: FnMut(usize, R) -> Result<()>,
{
    let threads = threads.clamp(1, 64).min(items.len().max(1));
    if threads == 1 {
        for (i, item) in items.iter().enumerate() {
            sink(i, work(item))?;
        }
        return Ok(());
    }
    let window = threads * 2;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let consumed = Mutex::new(0usize);
    let turn = Condvar::new();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, R)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, consumed, turn, work) = (&next, &stop, &consumed, &turn, &work);
            s.spawn(move || {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    {
                        let mut c = consumed.lock().unwrap_or_else(PoisonError::into_inner);
                        while i >= *c + window && !stop.load(Ordering::Relaxed) {
                            c = turn.wait(c).unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tx.send((i, work(item))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = 0usize;
        let mut result = Ok(());
        for (i, r) in &rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&want) {
                if let Err(e) = sink(want, r) {
                    result = Err(e);
                    break;
                }
                want += 1;
            }
            *consumed.lock().unwrap_or_else(PoisonError::into_inner) = want;
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            turn.notify_all();
            if result.is_err() {
                break;
            }
        }
        drop(rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn results_arrive_in_order() {
        let items: Vec<u64> = (0..1000).collect();
        let mut seen = Vec::new();
        ordered_map(
            &items,
            4,
            |x| x * 2,
            |i, r| {
                assert_eq!(r, items[i] * 2);
                seen.push(i);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn sink_error_stops_early() {
        let items: Vec<u64> = (0..10_000).collect();
        let err = ordered_map(
            &items,
            3,
            |x| *x,
            |i, _| {
                if i == 10 {
                    Err(Error::Cancelled)
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled));
    }
}
