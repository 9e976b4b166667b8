//! Cancel keys. Each client gets pgwake's own (pid, key) in BackendKeyData;
//! a CancelRequest quoting them is forwarded to whichever server backend
//! that client holds at that moment, and to nobody else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where a client's cancel goes right now: (server address, backend pid, backend key).
type CancelTarget = (SocketAddr, u32, u32);

#[derive(Debug, Default)]
pub struct CancelRegistry {
    next_pid: AtomicU32,
    clients: Mutex<HashMap<u32, Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    key: u32,
    target: Mutex<Option<CancelTarget>>,
}

/// A client's registration; removed when dropped.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pid: u32,
    entry: Arc<Entry>,
}

impl CancelRegistry {
    /// Registers a client and returns its keys.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let entry = Arc::new(Entry {
            key: rand::random(),
            target: Mutex::new(None),
        });
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Skip pids still in use after the counter wraps.
        let pid = loop {
            let pid = self
                .next_pid
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if pid != 0 && !clients.contains_key(&pid) {
                break pid;
            }
        };
        clients.insert(pid, entry.clone());
        CancelHandle {
            registry: self.clone(),
            pid,
            entry,
        }
    }

    /// The server backend to cancel for a client's (pid, key), if the key
    /// matches and the client holds a server connection.
    pub fn lookup(&self, pid: u32, key: u32) -> Option<CancelTarget> {
        let entry = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()?;
        if entry.key != key {
            return None;
        }
        let target = *entry.target.lock().unwrap_or_else(|e| e.into_inner());
        target
    }
}

impl CancelHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn key(&self) -> u32 {
        self.entry.key
    }

    /// Points this client's cancel at a server backend, or at nothing.
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.entry.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_reaches_the_target() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register();
        let b = reg.register();
        assert_ne!(a.pid(), b.pid());
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        a.set(Some((addr, 100, 7)));
        assert_eq!(reg.lookup(a.pid(), a.key()), Some((addr, 100, 7)));
        assert_eq!(reg.lookup(a.pid(), a.key().wrapping_add(1)), None);
        assert_eq!(reg.lookup(b.pid(), b.key()), None, "b holds no server");
        let pid = a.pid();
        let key = a.key();
        drop(a);
        assert_eq!(reg.lookup(pid, key), None);
    }
}
