//! Cancels across replicas (`[peering]`), after PgBouncer's peering.
//!
//! Several replicas behind one load balancer each receive a random share
//! of cancel requests, with two replicas half of them for the other's
//! clients. With peering on, the pid in every BackendKeyData is the
//! replica's id, a hash of the address the client reached it at (the
//! accepted socket's local address: podIP:port behind a Kubernetes
//! Service, which is what a headless Service resolves to). A cancel for another id goes to the peer
//! whose address hashes to it, and nowhere else: never to an address
//! outside the peer set, whatever a client sends. There the pid is the
//! receiver's own id, so it is handled locally: a request moves once (a
//! peer address that leads elsewhere, such as a load balancer's, is caught
//! by [`Peering::begin`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cancel::Lookup;
use crate::server::{send_cancel, send_cancel_within};
use crate::stats::CancelDrop;
use crate::Shared;

/// Connecting to a peer, and then waiting for it to handle the request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Resolving one peer name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long resolved peers are trusted.
const FRESH_FOR: Duration = Duration::from_secs(5);
/// A key no known peer issued may come from a replica started since the
/// last resolution: resolve again, but at most this often whatever clients
/// send.
const RETRY_MISS_AFTER: Duration = Duration::from_secs(1);
/// Forwards under way at once; beyond, requests are dropped.
const MAX_IN_FLIGHT: usize = 256;
/// Addresses kept per name.
const MAX_ADDRS_PER_NAME: usize = 1024;

/// The id of the replica clients reach at `addr`: 31 bits (drivers read
/// the pid as a positive int4), never 0. FNV-1a over the address's bytes,
/// written out rather than std's hasher so that every build computes the
/// same id: replicas of two versions meet during a rolling update.
pub fn replica_id(addr: SocketAddr) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => eat(&ip.octets()),
        std::net::IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    match h & 0x7fff_ffff {
        0 => 1,
        id => id,
    }
}

/// Whether `a` and `b` are one address (an IPv4 address and its
/// IPv4-mapped IPv6 form are).
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

/// The peers as last resolved, and from which settings.
struct Resolved {
    settings: pgwake_config::Peering,
    at: Instant,
    addrs: Vec<SocketAddr>,
}

/// This replica's side of peering: its address, the peers it knows and the
/// requests it is forwarding.
#[derive(Default)]
pub(crate) struct Peering {
    /// The TCP listener's address: the id given to unix-socket clients.
    listen_addr: OnceLock<SocketAddr>,
    /// Locked across a resolution, so that concurrent cancels share one.
    resolved: tokio::sync::Mutex<Option<Resolved>>,
    /// (pid, key) of the requests being forwarded.
    in_flight: Mutex<HashSet<(u32, u32)>>,
}

impl Peering {
    pub(crate) fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.listen_addr.set(addr);
    }

    /// The pid for a client connected at `local` (`None`: the unix socket)
    /// when peering is on; `None` when it is off.
    pub(crate) fn client_pid(
        &self,
        on: bool,
        local: impl FnOnce() -> Option<SocketAddr>,
    ) -> Option<u32> {
        if !on {
            return None;
        }
        // Asked only with peering on: a system call per login otherwise.
        local()
            .or_else(|| self.listen_addr.get().copied())
            .map(replica_id)
    }

    /// Marks (pid, key) as being forwarded until the guard drops; `None`
    /// when it is already, or too many are. The connection that brought
    /// a request stays open until its forward ends, so a request that
    /// comes back (a peer address that leads somewhere else, such as a
    /// load balancer) is refused here instead of going round.
    fn begin(&self, pid: u32, key: u32) -> Option<InFlight<'_>> {
        let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_IN_FLIGHT || !set.insert((pid, key)) {
            return None;
        }
        Some(InFlight {
            set: &self.in_flight,
            pair: (pid, key),
        })
    }

    /// The peer whose id is `pid`, other than `skip` (where the request
    /// arrived).
    async fn find(
        &self,
        settings: &pgwake_config::Peering,
        pid: u32,
        skip: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let pick = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .copied()
                .find(|a| replica_id(*a) == pid && !skip.is_some_and(|s| same(*a, s)))
        };
        let mut cache = self.resolved.lock().await;
        if let Some(r) = cache.as_ref().filter(|r| {
            r.settings.peers == settings.peers && r.settings.service == settings.service
        }) {
            let age = r.at.elapsed();
            if age < FRESH_FOR {
                let found = pick(&r.addrs);
                if found.is_some() || age < RETRY_MISS_AFTER {
                    return found;
                }
            }
        }
        let addrs = resolve(settings).await;
        let found = pick(&addrs);
        *cache = Some(Resolved {
            settings: settings.clone(),
            at: Instant::now(),
            addrs,
        });
        found
    }
}

struct InFlight<'a> {
    set: &'a Mutex<HashSet<(u32, u32)>>,
    pair: (u32, u32),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pair);
    }
}

/// Every address of the configured peers and of the service name.
async fn resolve(settings: &pgwake_config::Peering) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for name in settings.peers.iter().chain(settings.service.iter()) {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(addrs)) => out.extend(addrs.take(MAX_ADDRS_PER_NAME)),
            Ok(Err(e)) => {
                tracing::warn!(peer = %name, error = %e, "cannot resolve a peer (peering)")
            }
            Err(_) => tracing::warn!(peer = %name, "resolving a peer (peering) timed out"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Serves a CancelRequest that arrived at `local` (`None`: the unix
/// socket) from `from`: cancels the backend of this replica's client with
/// that key, or sends the request on to the peer that issued the key.
/// Returns once that is done, so the requester's connection stays open
/// until then (as PostgreSQL closes it once the request is handled).
pub(crate) async fn serve_cancel(
    shared: &Shared,
    pid: u32,
    key: u32,
    local: Option<SocketAddr>,
    from: &str,
) {
    match shared.cancels.lookup(pid, key) {
        Lookup::Server((addr, spid, skey)) => {
            shared
                .metrics
                .cancels
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = send_cancel(addr, spid, skey).await {
                tracing::warn!(peer = %from, error = %e, "could not forward cancel request");
            }
            return;
        }
        // Nothing runs: PostgreSQL ignores such a request too.
        Lookup::Idle => return,
        Lookup::Unknown => {}
    }
    let config = shared.config();
    let peering = &shared.peering;
    let mine = peering.client_pid(true, || local) == Some(pid);
    if !config.peering.enabled() || mine {
        shared.metrics.cancel_dropped(CancelDrop::UnknownKey);
        tracing::debug!(peer = %from, "cancel request for no client of this pgwake: ignored");
        return;
    }
    let Some(_in_flight) = peering.begin(pid, key) else {
        shared.metrics.cancel_dropped(CancelDrop::InFlight);
        tracing::debug!(peer = %from, "cancel request being forwarded already: ignored");
        return;
    };
    let Some(to) = peering.find(&config.peering, pid, local).await else {
        shared.metrics.cancel_dropped(CancelDrop::NoPeer);
        tracing::debug!(peer = %from, "cancel request for a replica not among the peers: ignored");
        return;
    };
    match send_cancel_within(to, pid, key, FORWARD_TIMEOUT).await {
        Ok(()) => {
            shared.metrics.cancel_forwarded(true);
            tracing::debug!(peer = %from, to = %to, "cancel request forwarded to the replica that issued its key");
        }
        Err(e) => {
            shared.metrics.cancel_forwarded(false);
            tracing::warn!(peer = %from, to = %to, error = %e, "could not forward cancel request to a peer replica");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids_are_positive_stable_and_tell_replicas_apart() {
        // Fixed values: a change would split replicas of two builds.
        assert_eq!(replica_id(addr("10.244.1.17:6432")), 0x5745_db24);
        assert_eq!(
            replica_id(addr("[fd00::5]:6432")),
            replica_id(addr("[fd00::5]:6432"))
        );
        assert_eq!(
            replica_id(addr("10.244.1.17:6432")),
            replica_id(addr("[::ffff:10.244.1.17]:6432")),
            "an IPv4 client of a dual-stack listener"
        );
        let ids: HashSet<u32> = (1..=200u16)
            .flat_map(|i| {
                [
                    format!("10.0.{}.{}:6432", i / 250, i % 250),
                    format!("127.0.0.1:{}", 7000 + i),
                ]
            })
            .map(|a| replica_id(addr(&a)))
            .collect();
        assert_eq!(ids.len(), 400);
        assert!(ids.iter().all(|id| *id != 0 && *id < 0x8000_0000));
    }

    #[tokio::test]
    async fn only_a_peer_with_the_id_is_chosen_and_never_where_it_came_from() {
        let p = Peering::default();
        let settings = pgwake_config::Peering {
            peers: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            service: None,
        };
        let a = addr("127.0.0.1:7001");
        let b = addr("127.0.0.1:7002");
        assert_eq!(p.find(&settings, replica_id(a), Some(b)).await, Some(a));
        assert_eq!(p.find(&settings, replica_id(a), Some(a)).await, None);
        let outsider = replica_id(addr("127.0.0.1:7003"));
        assert_eq!(p.find(&settings, outsider, None).await, None);
        // A new list (a reload) is used at once.
        let more = pgwake_config::Peering {
            peers: vec!["127.0.0.1:7003".into()],
            service: None,
        };
        assert_eq!(
            p.find(&more, outsider, None).await,
            Some(addr("127.0.0.1:7003"))
        );
    }

    #[tokio::test]
    async fn a_service_name_is_resolved() {
        let p = Peering::default();
        let settings = pgwake_config::Peering {
            peers: Vec::new(),
            service: Some("localhost:7004".into()),
        };
        let a = addr("127.0.0.1:7004");
        assert_eq!(p.find(&settings, replica_id(a), None).await, Some(a));
    }

    #[test]
    fn a_request_is_forwarded_once_at_a_time() {
        let p = Peering::default();
        let g = p.begin(1, 2).expect("first");
        assert!(p.begin(1, 2).is_none(), "the same request while in flight");
        assert!(p.begin(1, 3).is_some());
        drop(g);
        assert!(p.begin(1, 2).is_some());
    }
}
