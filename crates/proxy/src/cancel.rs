//! Cancel keys. Each client gets pgwake's own (pid, key) in BackendKeyData;
//! a CancelRequest quoting them is forwarded to whichever server backend
//! that client holds at that moment, and to nobody else.
//!
//! With `[peering]` the pid names the replica (every client of a replica
//! shares it, see [`crate::peering`]) and the key alone tells its clients
//! apart; without, each client gets a pid of its own. Either way a cancel
//! must quote both, and the key is 32 random bits, as PostgreSQL's is.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where a client's cancel goes right now: (server address, backend pid, backend key).
type CancelTarget = (SocketAddr, u32, u32);

#[derive(Debug, Default)]
pub struct CancelRegistry {
    next_pid: AtomicU32,
    /// By (pid, key).
    clients: Mutex<HashMap<(u32, u32), Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    pid: u32,
    key: u32,
    target: Mutex<Option<CancelTarget>>,
}

/// What a (pid, key) names here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A client holding a server connection: cancel its backend.
    Server(CancelTarget),
    /// A client of this proxy holding no server connection: nothing runs.
    Idle,
    /// No client of this proxy.
    Unknown,
}

/// A client's registration; removed when dropped. (Two words: every
/// client, idle ones too, holds one.)
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    entry: Arc<Entry>,
}

impl CancelRegistry {
    /// Registers a client and returns its keys. `replica`: the pid every
    /// client of this replica shares (`[peering]`); `None`: a pid of its own.
    pub fn register(self: &Arc<Self>, replica: Option<u32>) -> CancelHandle {
        let pid = replica.unwrap_or_else(|| {
            // 31 bits and never 0: drivers read the pid as a positive int4.
            let n = self.next_pid.fetch_add(1, Ordering::Relaxed);
            n % 0x7fff_ffff + 1
        });
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // A fresh key until the pair is unique: the map holds at most
        // max_client_conn pairs out of 2^32 keys, so this ends at once.
        let key = loop {
            let key: u32 = rand::random();
            if !clients.contains_key(&(pid, key)) {
                break key;
            }
        };
        let entry = Arc::new(Entry {
            pid,
            key,
            target: Mutex::new(None),
        });
        clients.insert((pid, key), entry.clone());
        CancelHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// What a cancel request quoting (pid, key) reaches here.
    pub fn lookup(&self, pid: u32, key: u32) -> Lookup {
        let entry = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pid, key))
            .cloned();
        let Some(entry) = entry else {
            return Lookup::Unknown;
        };
        let target = *entry.target.lock().unwrap_or_else(|e| e.into_inner());
        target.map_or(Lookup::Idle, Lookup::Server)
    }
}

impl CancelHandle {
    pub fn pid(&self) -> u32 {
        self.entry.pid
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
            .remove(&(self.entry.pid, self.entry.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_reaches_the_target() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register(None);
        let b = reg.register(None);
        assert_ne!(a.pid(), b.pid());
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        a.set(Some((addr, 100, 7)));
        assert_eq!(reg.lookup(a.pid(), a.key()), Lookup::Server((addr, 100, 7)));
        assert_eq!(
            reg.lookup(a.pid(), a.key().wrapping_add(1)),
            Lookup::Unknown
        );
        assert_eq!(
            reg.lookup(b.pid(), b.key()),
            Lookup::Idle,
            "b holds no server"
        );
        let pid = a.pid();
        let key = a.key();
        drop(a);
        assert_eq!(reg.lookup(pid, key), Lookup::Unknown);
    }

    #[test]
    fn clients_of_a_replica_share_its_pid_and_differ_by_key() {
        let reg = Arc::new(CancelRegistry::default());
        let clients: Vec<CancelHandle> = (0..1000).map(|_| reg.register(Some(42))).collect();
        let keys: std::collections::HashSet<u32> = clients.iter().map(|c| c.key()).collect();
        assert_eq!(keys.len(), clients.len(), "keys are unique");
        assert!(clients.iter().all(|c| c.pid() == 42));
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        clients[3].set(Some((addr, 9, 9)));
        assert_eq!(
            reg.lookup(42, clients[3].key()),
            Lookup::Server((addr, 9, 9))
        );
        assert_eq!(
            reg.lookup(43, clients[3].key()),
            Lookup::Unknown,
            "the pid is checked"
        );
        assert_eq!(reg.lookup(42, clients[4].key()), Lookup::Idle);
    }

    #[test]
    fn own_pids_stay_positive() {
        let reg = Arc::new(CancelRegistry::default());
        reg.next_pid.store(0x7fff_fffe, Ordering::Relaxed);
        let pids: Vec<u32> = (0..3).map(|_| reg.register(None).pid()).collect();
        assert_eq!(pids, [0x7fff_ffff, 1, 2]);
    }
}
