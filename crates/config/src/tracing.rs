//! `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::tree::insert;

/// Spans for the statements an app sends with a W3C trace context in a
/// sqlcommenter comment, and for wakes, idle stops and credential
/// refreshes. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    /// The collector's OTLP/HTTP endpoint (protobuf), as
    /// `http://127.0.0.1:4318`; spans go to its `/v1/traces` (a URL that
    /// already ends so is used as it is). Unset: tracing is off. When the
    /// file and `PGWAKE_TRACING_OTLP_ENDPOINT` are silent,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    /// Written (`pgwake check`, `SHOW CONFIG`) with any user name and
    /// password as `***`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_shown"
    )]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of pgwake's spans (else `OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// More resource attributes (`deployment.environment = "prod"`); else
    /// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k=v`).
    pub resource_attributes: BTreeMap<String, String>,
    /// How long one export may take before it is abandoned (its spans
    /// dropped and counted).
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Spans held for export at most; beyond this a slow or dead collector
    /// costs spans (counted in `pgwake_trace_spans_dropped_total`), never
    /// a client's time.
    pub queue_size: usize,
    /// Put the statement's text in `server execution` spans (`db.query.text`),
    /// with string literals masked as in the slow-query log. Off by default.
    pub statement_text: bool,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            otlp_endpoint: None,
            service_name: "pgwake".into(),
            resource_attributes: BTreeMap::new(),
            export_timeout: Duration::from_secs(10),
            queue_size: 2048,
            statement_text: false,
        }
    }
}

impl Tracing {
    /// Whether spans are made and exported.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// The URL spans are posted to.
    /// [`Self::traces_url`] as logs and messages show it: a user name or
    /// password in it (a collector's basic auth) is replaced by `***`.
    pub fn traces_url_shown(&self) -> Option<String> {
        self.traces_url().map(|u| hide_credentials(&u))
    }

    pub fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if e.ends_with("/v1/traces") {
            e.to_owned()
        } else {
            format!("{e}/v1/traces")
        })
    }
}

/// Fills `[tracing]` keys the file and `PGWAKE_TRACING_*` left unset from
/// OpenTelemetry's standard variables.
pub(crate) fn apply_otel_env<'a>(
    root: &mut Table,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let set = |root: &Table, key: &str| root.get("tracing").and_then(|t| t.get(key)).is_some();
    let mut endpoint = None;
    let mut traces_endpoint = None;
    let mut service = None;
    let mut attributes = None;
    for (name, value) in env {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => endpoint = Some(value),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => traces_endpoint = Some(value),
            "OTEL_SERVICE_NAME" => service = Some(value),
            "OTEL_RESOURCE_ATTRIBUTES" => attributes = Some(value),
            _ => {}
        }
    }
    if !set(root, "otlp_endpoint") {
        if let Some(e) = traces_endpoint.or(endpoint) {
            insert(
                root,
                &["tracing", "otlp_endpoint"],
                Value::String(e.to_owned()),
            );
        }
    }
    if !set(root, "service_name") {
        if let Some(s) = service {
            insert(
                root,
                &["tracing", "service_name"],
                Value::String(s.to_owned()),
            );
        }
    }
    if !set(root, "resource_attributes") {
        if let Some(a) = attributes {
            let mut t = Table::new();
            for pair in a.split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    let (k, v) = (k.trim(), v.trim());
                    if !k.is_empty() {
                        t.insert(k.to_owned(), Value::String(v.to_owned()));
                    }
                }
            }
            insert(root, &["tracing", "resource_attributes"], Value::Table(t));
        }
    }
}

fn serialize_shown<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_str(&hide_credentials(url)),
        None => s.serialize_none(),
    }
}

/// `url` with any user name and password replaced by `***` (as is, when
/// it does not parse: there is nothing to find in it then).
fn hide_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(u.password().map(|_| "***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Problems with `[tracing]`, each naming its key.
pub(crate) fn check(t: &Tracing, errors: &mut Vec<String>) {
    if let Some(e) = &t.otlp_endpoint {
        let ok = url::Url::parse(e)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if ok.is_none() {
            errors.push(format!(
                "tracing.otlp_endpoint = {:?} is not an http:// or https:// URL (like http://127.0.0.1:4318)",
                hide_credentials(e)
            ));
        }
    }
    if t.service_name.trim().is_empty() {
        errors.push("tracing.service_name must not be empty".into());
    }
    if t.export_timeout.is_zero() {
        errors.push("tracing.export_timeout must be above zero".into());
    }
    if !(16..=1_000_000).contains(&t.queue_size) {
        errors.push("tracing.queue_size must be between 16 and 1000000".into());
    }
}
