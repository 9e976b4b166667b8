//! Azure Database for PostgreSQL Flexible Server through Azure Resource
//! Manager: `GET {resource}` (`properties.state`), `POST {resource}/start`,
//! `POST {resource}/stop` (202 Accepted).

use std::sync::Arc;
use std::time::Duration;

use pgwake_credentials::CredentialSource;
use reqwest::{Method, StatusCode};

use crate::{BoxFuture, Provider, ProviderError, ServerState};

/// Attempts per request when ARM answers 429 or 5xx (or does not answer).
const ATTEMPTS: u32 = 8;
/// Backoff without `Retry-After`: 1 s doubling to 16 s; `Retry-After` is
/// honoured up to a minute.
const BACKOFF_MAX: Duration = Duration::from_secs(16);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

pub struct AzureProvider {
    http: reqwest::Client,
    /// `{arm_endpoint}{resource_id}`.
    url: String,
    api_version: String,
    token: Arc<dyn CredentialSource>,
}

impl std::fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AzureProvider {
    /// `token` yields ARM tokens (scope `https://management.azure.com/.default`).
    pub fn new(
        arm_endpoint: &str,
        resource_id: &str,
        api_version: &str,
        token: Arc<dyn CredentialSource>,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ProviderError(format!("azure provider: HTTP client: {e}")))?;
        Ok(AzureProvider {
            http,
            url: format!(
                "{}/{}",
                arm_endpoint.trim_end_matches('/'),
                resource_id.trim_start_matches('/')
            ),
            api_version: api_version.to_string(),
            token,
        })
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> ProviderError {
        ProviderError(format!("azure provider: {what} {}: {e}", self.url))
    }

    /// Sends a request, retrying 429 and 5xx answers with backoff.
    async fn send(
        &self,
        method: Method,
        suffix: &str,
    ) -> Result<(StatusCode, String), ProviderError> {
        let url = format!("{}{suffix}?api-version={}", self.url, self.api_version);
        let what = if method == Method::GET { "GET" } else { "POST" };
        let mut backoff = Duration::from_secs(1);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let token = self
                .token
                .secret(Duration::from_secs(10))
                .await
                .map_err(|e| self.fail(what, e))?
                .ok_or_else(|| self.fail(what, "no ARM token"))?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose());
            if method == Method::POST {
                // ARM refuses a POST without a length (411).
                request = request.header("content-length", "0");
            }
            let sent = request.send().await;
            let wait = match sent {
                Ok(rsp) => {
                    let status = rsp.status();
                    let retry_after = rsp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX));
                    let body = rsp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok((status, body));
                    }
                    last = format!("HTTP {}: {}", status.as_u16(), arm_message(&body));
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Err(self.fail(what, last));
                    }
                    retry_after.unwrap_or(backoff)
                }
                Err(e) => {
                    last = e.to_string();
                    backoff
                }
            };
            if attempt < ATTEMPTS {
                tracing::warn!(url = %url, error = %last, retry_in = ?wait, "azure provider: request failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Err(self.fail(what, format!("gave up after {ATTEMPTS} attempts: {last}")))
    }
}

/// ARM's error text (`{"error": {"code", "message"}}`), else the body, short.
fn arm_message(body: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let m = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code} {m}").trim().to_string()
        })
        .unwrap_or_else(|| body.trim().to_string());
    msg.chars().take(300).collect()
}

impl Provider for AzureProvider {
    fn state(&self) -> BoxFuture<'_, Result<ServerState, ProviderError>> {
        Box::pin(async move {
            let (_, body) = self.send(Method::GET, "").await?;
            let v: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| self.fail("GET", format!("answer is not JSON: {e}")))?;
            let state = v
                .pointer("/properties/state")
                .and_then(|s| s.as_str())
                .ok_or_else(|| self.fail("GET", "answer has no properties.state"))?;
            Ok(ServerState::parse(state))
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move { self.send(Method::POST, "/start").await.map(|_| ()) })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move { self.send(Method::POST, "/stop").await.map(|_| ()) })
    }

    fn describe(&self) -> String {
        format!("azure {}", self.url)
    }
}
