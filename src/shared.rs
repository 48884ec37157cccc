//! Small helpers every layer uses; a leaf of the module graph (it imports nothing of volumed).

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Locks a mutex whose holder may have panicked: every critical section here only inserts,
/// removes or replaces whole values, so what a panicking holder left is still consistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on a condition variable, with `lock`'s view of poisoning.
pub fn wait<'a, T>(condvar: &std::sync::Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Sends `value` on a watch channel only when it differs from what is there (receivers wake
/// only for news); true when it was sent.
pub fn publish<T: PartialEq>(tx: &watch::Sender<T>, value: T) -> bool {
    tx.send_if_modified(|current| {
        let changed = *current != value;
        if changed {
            *current = value;
        }
        changed
    })
}
