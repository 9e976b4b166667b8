//! Choosing TCP ports for clusters (and for tests' own listeners).

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::Error;

/// Ports handed out by [`free_port`]: below the ephemeral range (32768+), so a
/// client retrying a closed port can never be given that port as its own
/// source port and connect to itself.
pub(crate) const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// A free TCP port on 127.0.0.1 in 20000..32000, below the ephemeral range so
/// a server that is stopped and started again cannot lose its port to a
/// client that connected to itself (see the TCP self-connect note). Never
/// returns the same port twice within one process.
///
/// Fails when every port in the range is taken or already handed out.
pub fn free_port() -> Result<u16, Error> {
    // One set per process: tests in one binary share it, so two of them are
    // never handed the same port.
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    let len = PORT_RANGE.end - PORT_RANGE.start;
    // A random start spreads concurrent test processes over the range.
    let start = rand::random_range(0..len);
    for i in 0..len {
        let port = PORT_RANGE.start + (start + i) % len;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(Error::NoFreePort(PORT_RANGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_below_ephemeral_range_unique_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for port in ports {
            assert!(PORT_RANGE.contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be bindable");
        }
    }
}
