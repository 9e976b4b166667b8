//! A fake Azure Resource Manager endpoint for one PostgreSQL Flexible Server,
//! driving a real local cluster: `GET {id}` answers `properties.state`;
//! `POST {id}/start` and `POST {id}/stop` answer 202 Accepted with
//! `Azure-AsyncOperation` and `Location`, then move the server through
//! Starting/Stopping (after configurable delays) with `pg_ctl`. Faults (429
//! with `Retry-After`, 500) can be queued for the next requests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use pgwake_localpg::HOST;

use crate::Cluster;

/// The resource ID the fake serves.
pub const RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-test/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg-test";

struct Inner {
    cluster: Arc<Cluster>,
    state: Mutex<&'static str>,
    start_delay: Mutex<Duration>,
    stop_delay: Mutex<Duration>,
    faults: Mutex<VecDeque<(u16, Option<u64>)>>,
    starts: AtomicU64,
    stops: AtomicU64,
    gets: AtomicU64,
    operations: AtomicU64,
    addr: Mutex<Option<SocketAddr>>,
}

/// A running fake ARM endpoint; stops serving when dropped.
pub struct FakeArm {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeArm {
    /// Serves `cluster`, Ready or Stopped as it is now. Must run inside a
    /// tokio runtime.
    pub async fn start(cluster: Arc<Cluster>) -> anyhow::Result<Self> {
        let running = {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.is_running()).await?
        };
        let inner = Arc::new(Inner {
            cluster,
            state: Mutex::new(if running { "Ready" } else { "Stopped" }),
            start_delay: Mutex::new(Duration::ZERO),
            stop_delay: Mutex::new(Duration::ZERO),
            faults: Mutex::new(VecDeque::new()),
            starts: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            addr: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind((HOST, 0))
            .await
            .context("binding the fake ARM endpoint")?;
        let addr = listener.local_addr()?;
        *inner.addr.lock().unwrap() = Some(addr);
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeArm {
            addr,
            inner,
            server,
        })
    }

    /// `lifecycle.arm_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's current state, as ARM reports it.
    pub fn state(&self) -> &'static str {
        *self.inner.state.lock().unwrap()
    }

    /// How long Starting lasts before `pg_ctl start`.
    pub fn set_start_delay(&self, d: Duration) {
        *self.inner.start_delay.lock().unwrap() = d;
    }

    /// How long Stopping lasts before `pg_ctl stop`.
    pub fn set_stop_delay(&self, d: Duration) {
        *self.inner.stop_delay.lock().unwrap() = d;
    }

    /// The next request (of any kind) is answered with `status`, and
    /// `Retry-After: secs` when given. Faults queue up in order.
    pub fn inject(&self, status: u16, retry_after: Option<u64>) {
        self.inner
            .faults
            .lock()
            .unwrap()
            .push_back((status, retry_after));
    }

    /// Start requests received (faulted ones excluded).
    pub fn starts(&self) -> u64 {
        self.inner.starts.load(Ordering::SeqCst)
    }

    /// Stop requests received (faulted ones excluded).
    pub fn stops(&self) -> u64 {
        self.inner.stops.load(Ordering::SeqCst)
    }

    /// State requests (GET) received, faulted ones included.
    pub fn state_gets(&self) -> u64 {
        self.inner.gets.load(Ordering::SeqCst)
    }
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let path = uri.path();
    if method == Method::GET && path == RESOURCE_ID {
        inner.gets.fetch_add(1, Ordering::SeqCst);
    }
    let fault = inner.faults.lock().unwrap().pop_front();
    if let Some((status, retry_after)) = fault {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut rsp = arm_error(
            status,
            "InjectedFault",
            "the fake ARM endpoint fails on purpose",
        );
        if let Some(secs) = retry_after {
            rsp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return rsp;
    }
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    if !authorized {
        return arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "missing bearer token",
        );
    }
    if !q.contains_key("api-version") {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "api-version is required",
        );
    }
    if method == Method::GET && path.starts_with("/operations/") {
        let state = *inner.state.lock().unwrap();
        let status = if state == "Starting" || state == "Stopping" {
            "InProgress"
        } else {
            "Succeeded"
        };
        return Json(json!({"status": status})).into_response();
    }
    let action = if path == RESOURCE_ID {
        ""
    } else if let Some(a) = path.strip_prefix(RESOURCE_ID) {
        a
    } else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "no such resource",
        );
    };
    match (method.as_str(), action) {
        ("GET", "") => {
            let state = *inner.state.lock().unwrap();
            Json(json!({
                "id": RESOURCE_ID,
                "name": "pg-test",
                "type": "Microsoft.DBforPostgreSQL/flexibleServers",
                "properties": {"state": state, "version": "15"},
            }))
            .into_response()
        }
        ("POST", "/start") => {
            inner.starts.fetch_add(1, Ordering::SeqCst);
            {
                let mut st = inner.state.lock().unwrap();
                match *st {
                    "Stopped" => *st = "Starting",
                    "Ready" | "Starting" => return accepted(&inner),
                    other => {
                        return arm_error(
                            StatusCode::CONFLICT,
                            "ServerIsBusy",
                            &format!("the server is {other}"),
                        )
                    }
                }
            }
            let delay = *inner.start_delay.lock().unwrap();
            let inner2 = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let c = inner2.cluster.clone();
                let ok = tokio::task::spawn_blocking(move || c.start_again())
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
                *inner2.state.lock().unwrap() = if ok { "Ready" } else { "Stopped" };
            });
            accepted(&inner)
        }
        ("POST", "/stop") => {
            inner.stops.fetch_add(1, Ordering::SeqCst);
            {
                let mut st = inner.state.lock().unwrap();
                match *st {
                    "Ready" => *st = "Stopping",
                    "Stopped" | "Stopping" => return accepted(&inner),
                    other => {
                        return arm_error(
                            StatusCode::CONFLICT,
                            "ServerIsBusy",
                            &format!("the server is {other}"),
                        )
                    }
                }
            }
            let delay = *inner.stop_delay.lock().unwrap();
            let inner2 = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let c = inner2.cluster.clone();
                let _ = tokio::task::spawn_blocking(move || c.stop()).await;
                *inner2.state.lock().unwrap() = "Stopped";
            });
            accepted(&inner)
        }
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "unsupported",
        ),
    }
}

/// 202 Accepted, pointing at an operation to poll, as ARM answers.
fn accepted(inner: &Inner) -> Response {
    let n = inner.operations.fetch_add(1, Ordering::SeqCst);
    let addr = inner.addr.lock().unwrap().expect("bound");
    let op = format!("http://{addr}/operations/{n}?api-version=2024-08-01");
    let mut rsp = StatusCode::ACCEPTED.into_response();
    rsp.headers_mut()
        .insert("azure-asyncoperation", op.parse().unwrap());
    rsp.headers_mut().insert("location", op.parse().unwrap());
    rsp.headers_mut()
        .insert("retry-after", "1".parse().unwrap());
    rsp
}
