//! The import gate of a single-process store (sled): every write that binds or claims a
//! tag holds it shared, the write phase of an import holds it exclusively, so no write
//! lands between an import's check and its write. Reads do not take it.
//!
//! An exclusive holder waiting keeps new shared holders out (an import is not starved by
//! a stream of pushes), and a shared holder waits at most [`SHARED_WAIT`], then fails
//! like a database lock timeout does, so writers never pile up behind a long import.
//!
//! Every release bumps a generation: an import that checked its records without the
//! gate, and finds the generation unchanged once it holds it exclusively, knows no write
//! finished in between (one still running then finishes before the exclusive hold
//! begins, and bumps it), so its check still holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::StoreError;

/// How long a write waits for an import's write phase before it is refused (the sled
/// store's gate): the same as PostgreSQL's `lock_timeout` for tagpin's sessions.
pub const SHARED_WAIT: Duration = Duration::from_secs(5);

pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
    generation: AtomicU64,
    /// How long a shared holder waits.
    wait: Duration,
}

#[derive(Default)]
struct State {
    shared: usize,
    exclusive: bool,
    /// Exclusive holders waiting for the shared ones to leave.
    waiting: usize,
}

/// Held by a write (shared) or an import's write phase (exclusive); released on drop.
pub struct Held<'a> {
    gate: &'a Gate,
    exclusive: bool,
}

impl Gate {
    pub fn new(wait: Duration) -> Self {
        Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            generation: AtomicU64::new(0),
            wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked holding it; the counts stay valid
        // (each is changed in one statement).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold the gate for a write, waiting for an import at most the gate's wait.
    pub fn shared(&self) -> Result<Held<'_>, StoreError> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.lock();
        while state.exclusive || state.waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Importing(
                    "an import is being written; writes wait for it (retry shortly)".into(),
                ));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.shared += 1;
        Ok(Held {
            gate: self,
            exclusive: false,
        })
    }

    /// Hold the gate alone (an import's write phase), once every write in progress ended.
    pub fn exclusive(&self) -> Held<'_> {
        let mut state = self.lock();
        state.waiting += 1;
        while state.exclusive || state.shared > 0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting -= 1;
        state.exclusive = true;
        Held {
            gate: self,
            exclusive: true,
        }
    }

    /// Bumped by every release; see the module docs.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        if self.exclusive {
            state.exclusive = false;
        } else {
            state.shared -= 1;
        }
        self.gate.generation.fetch_add(1, Ordering::SeqCst);
        drop(state);
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writes_share_the_gate_and_an_import_holds_it_alone() {
        let gate = Arc::new(Gate::new(SHARED_WAIT));
        let a = gate.shared().unwrap();
        let b = gate.shared().unwrap();
        let before = gate.generation();
        let g = Arc::clone(&gate);
        let import = std::thread::spawn(move || {
            let held = g.exclusive();
            let at = g.generation();
            drop(held);
            at
        });
        // The import waits for both writes; a new write waits for the import.
        while gate.lock().waiting == 0 {
            std::thread::yield_now();
        }
        drop(a);
        drop(b);
        let seen = import.join().unwrap();
        assert_eq!(seen, before + 2, "both writes ended before the import held the gate");
        assert_eq!(gate.generation(), before + 3);
        drop(gate.shared().unwrap());
    }

    #[test]
    fn a_write_waiting_for_an_import_gives_up() {
        let wait = Duration::from_millis(50);
        let gate = Gate::new(wait);
        let held = gate.exclusive();
        let started = Instant::now();
        let e = gate.shared().err().expect("refused while the import holds the gate");
        assert!(started.elapsed() >= wait);
        assert!(e.to_string().contains("import"), "{e}");
        drop(held);
        assert!(gate.shared().is_ok());
    }
}
