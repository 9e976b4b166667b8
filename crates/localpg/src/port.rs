//! Choosing TCP ports for clusters (and for tests' own listeners).

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::Error;

/// Ports handed out by [`free_port`] when the machine uses Linux's default
/// ephemeral range (32768..=60999): below it, so a client retrying a closed
/// port can never be given that port as its own source port and connect to
/// itself, nor take it as a source port between the check and the bind.
pub(crate) const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Where the kernel says its ephemeral (source) ports are.
const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The ports to choose from: [`PORT_RANGE`] with the machine's ephemeral range
/// cut out. A machine whose ephemeral range covers all of it (some containers
/// use 1024..=65535) leaves whatever part of 1024..=65535 is outside, and
/// failing that the plain range, which is the best that can be done.
fn candidate_ports() -> Vec<u16> {
    let ephemeral = std::fs::read_to_string(EPHEMERAL_RANGE_FILE)
        .ok()
        .and_then(|text| parse_ephemeral_range(&text));
    let outside = |range: std::ops::RangeInclusive<u16>| -> Vec<u16> {
        range
            .filter(|port| ephemeral.as_ref().is_none_or(|e| !e.contains(port)))
            .collect()
    };
    let preferred = outside(PORT_RANGE.start..=PORT_RANGE.end - 1);
    if !preferred.is_empty() {
        return preferred;
    }
    let any = outside(1024..=u16::MAX);
    if !any.is_empty() {
        return any;
    }
    PORT_RANGE.collect()
}

/// `ip_local_port_range` holds two numbers, low and high.
fn parse_ephemeral_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let low = numbers.next()?.ok()?;
    let high = numbers.next()?.ok()?;
    (low <= high).then_some(low..=high)
}

/// A free TCP port on 127.0.0.1, outside the machine's ephemeral range
/// (20000..32000 on a default Linux), so a server that is stopped and started
/// again cannot lose its port to a client that connected to itself (see the
/// TCP self-connect note). Never returns the same port twice within one
/// process.
///
/// Fails when every candidate port is taken or already handed out.
pub fn free_port() -> Result<u16, Error> {
    // One set per process: tests in one binary share it, so two of them are
    // never handed the same port.
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    let candidates = candidate_ports();
    // A random start spreads concurrent test processes over the range.
    let start = rand::random_range(0..candidates.len());
    for i in 0..candidates.len() {
        let port = candidates[(start + i) % candidates.len()];
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(Error::NoFreePort(candidates.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_range_is_read_and_cut_out() {
        assert_eq!(parse_ephemeral_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_ephemeral_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_ephemeral_range("garbage"), None);
        assert_eq!(parse_ephemeral_range("9 3"), None);
        if let Some(ephemeral) = std::fs::read_to_string(EPHEMERAL_RANGE_FILE)
            .ok()
            .and_then(|t| parse_ephemeral_range(&t))
        {
            let candidates = candidate_ports();
            assert!(!candidates.is_empty());
            let overlap = candidates.iter().filter(|p| ephemeral.contains(p)).count();
            // Only a machine whose ephemeral range is everything overlaps.
            if *ephemeral.start() > 1024 || *ephemeral.end() < u16::MAX {
                assert_eq!(overlap, 0, "{ephemeral:?}");
            }
        }
    }

    #[test]
    fn free_port_is_outside_ephemeral_range_unique_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        let candidates: HashSet<u16> = candidate_ports().into_iter().collect();
        for port in ports {
            assert!(candidates.contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be bindable");
        }
    }
}
