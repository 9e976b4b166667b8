//! A fake Azure managed identity endpoint: the App Service / Container Apps
//! protocol (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`,
//! `GET ?api-version=2019-08-01&resource=…` with header `X-IDENTITY-HEADER`,
//! JSON with `access_token` and `expires_on` in Unix seconds as a string).
//!
//! Each token it issues becomes the Postgres role's password, valid until
//! the token expires (`VALID UNTIL`), so a stale or expired token really
//! fails at the server. It can be told to fail (an HTTP status, or no answer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use pgwake_localpg::{quote_ident, quote_literal, HOST, SUPERUSER};

use crate::{connect, Cluster};

/// The resource Azure Database for PostgreSQL tokens are issued for.
pub const POSTGRES_RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";
/// The resource Azure Resource Manager tokens are issued for (not tied to
/// the role's password).
pub const ARM_RESOURCE: &str = "https://management.azure.com";

/// How the endpoint misbehaves, on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answers normally.
    None,
    /// Answers with this HTTP status and an error body.
    Status(u16),
    /// Never answers (the client's timeout fires).
    Hang,
}

struct Inner {
    header: String,
    role: String,
    db_port: u16,
    lifetime: Mutex<Duration>,
    failure: Mutex<Failure>,
    calls: AtomicU64,
    issued: Mutex<Vec<String>>,
}

/// A running fake endpoint; stops when dropped.
pub struct FakeIdentity {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeIdentity {
    /// Serves tokens for `role` on `cluster`, each valid for `lifetime`.
    /// Must run inside a tokio runtime.
    pub async fn start(cluster: &Cluster, role: &str, lifetime: Duration) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            header: format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            role: role.to_string(),
            db_port: cluster.port(),
            lifetime: Mutex::new(lifetime),
            failure: Mutex::new(Failure::None),
            calls: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind((HOST, 0))
            .await
            .context("binding the fake identity endpoint")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/msi/token", get(token))
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeIdentity {
            addr,
            inner,
            server,
        })
    }

    /// `IDENTITY_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }

    /// The environment a process needs to use this endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDENTITY_ENDPOINT", self.endpoint()),
            ("IDENTITY_HEADER", self.inner.header.clone()),
        ]
    }

    pub fn fail(&self, failure: Failure) {
        *self.inner.failure.lock().unwrap() = failure;
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.inner.lifetime.lock().unwrap() = lifetime;
    }

    /// Requests answered or refused so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.inner.issued.lock().unwrap().clone()
    }
}

impl Drop for FakeIdentity {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": "invalid_request", "error_description": message})),
    )
        .into_response()
}

async fn token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    inner.calls.fetch_add(1, Ordering::SeqCst);
    let failure = *inner.failure.lock().unwrap();
    match failure {
        Failure::None => {}
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "the fake identity endpoint is failing on purpose");
        }
        Failure::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "hung");
        }
    }
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(&inner.header)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-IDENTITY-HEADER",
        );
    }
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return error(StatusCode::BAD_REQUEST, "api-version must be 2019-08-01");
    }
    let Some(resource) = q.get("resource") else {
        return error(StatusCode::BAD_REQUEST, "resource is required");
    };
    let resource = resource.trim_end_matches('/');
    let for_postgres = resource == POSTGRES_RESOURCE;
    if !for_postgres && resource != ARM_RESOURCE {
        return error(StatusCode::BAD_REQUEST, "unknown resource");
    }
    let lifetime = *inner.lifetime.lock().unwrap();
    let expires = SystemTime::now() + lifetime;
    let expires_secs = expires
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    // The server accepts the token as the role's password until it expires.
    let valid_until = humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(expires_secs));
    let sql = format!(
        "ALTER ROLE {} PASSWORD {} VALID UNTIL {}",
        quote_ident(&inner.role),
        quote_literal(&token),
        quote_literal(&valid_until.to_string())
    );
    if !for_postgres {
        return Json(json!({
            "access_token": token,
            "expires_on": expires_secs.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }))
        .into_response();
    }
    let result = async {
        let c = connect(HOST, inner.db_port, SUPERUSER, None, "postgres").await?;
        c.batch_execute(&sql).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not set the role's password: {e:#}"),
        );
    }
    inner.issued.lock().unwrap().push(token.clone());
    Json(json!({
        "access_token": token,
        "expires_on": expires_secs.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": "00000000-0000-0000-0000-000000000000",
    }))
    .into_response()
}
