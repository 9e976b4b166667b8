//! OpenTelemetry traces (`[tracing]`): pgwake's spans inside the app's own
//! trace.
//!
//! An app instrumented with OpenTelemetry appends its database span's W3C
//! trace context to each statement as a sqlcommenter comment. For such a
//! statement (sampled), the session keeps a [`Statement`] record of plain
//! instants while it runs and hands it here when its reply is complete;
//! spans are built then, with their real start and end times, as children
//! of the app's span: `pool wait`, `server wake`, `server connect` (with
//! one event per phase) and `server execution`. Wakes and idle stops make
//! small traces of their own.
//!
//! A statement without a context costs the relay one look at its last
//! bytes ([`pgwake_protocol::sqlcommenter::may_carry_comment`]); with
//! tracing off, one branch.

mod queue;
mod statement;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;
use pgwake_config::Tracing;
use pgwake_protocol::sqlcommenter;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::server::{ConnectTrace, WakeTrace};
pub(crate) use queue::SpanCounts;
pub(crate) use statement::{InSession, Statement};

/// `db.system.name` of every database span.
const DB_SYSTEM: &str = "postgresql";
/// A pool wait shorter than this (a connection was idle) is an attribute
/// of the next span, not a span of its own: traces stay small.
const POOL_WAIT_SPAN_MIN: Duration = Duration::from_millis(1);

/// The tracer and what became of its spans.
pub(crate) struct Traces {
    tracer: SdkTracer,
    /// Kept so that the tracer's processor lives as long as this does.
    _provider: SdkTracerProvider,
    pub(crate) counts: Arc<SpanCounts>,
    statement_text: bool,
    stop: CancellationToken,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// The tracer `[tracing]` describes, or `None` when tracing is off, and
    /// the export task to spawn (it ends after `stop`, with a last export).
    pub(crate) fn from_config(
        config: &Tracing,
    ) -> Result<
        Option<(
            Arc<Traces>,
            impl std::future::Future<Output = ()> + Send + 'static,
        )>,
        String,
    > {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(config.export_timeout)
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()
            .map_err(|e| {
                let shown = config.traces_url_shown().unwrap_or_default();
                format!("tracing.otlp_endpoint = {shown:?}: {e}")
            })?;
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(
                config
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);
        let counts = Arc::new(SpanCounts::default());
        let stop = CancellationToken::new();
        let (processor, task) = queue::Queue::new(
            exporter,
            config.queue_size,
            config.export_timeout,
            counts.clone(),
            stop.clone(),
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "pgwake");
        let shown = config.traces_url_shown().unwrap_or_default();
        tracing::info!(endpoint = %shown, service = %config.service_name, "tracing: spans for statements that carry a trace context");
        Ok(Some((
            Arc::new(Traces {
                tracer,
                _provider: provider,
                counts,
                statement_text: config.statement_text,
                stop,
            }),
            task,
        )))
    }

    /// Ends the export task after one last export of what is queued.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether statement texts go into spans (`tracing.statement_text`).
    pub(crate) fn statement_text(&self) -> bool {
        self.statement_text
    }

    /// The app's span a Query's or Parse's body names as its parent, when
    /// sampled. Most statements cost a look at their last bytes.
    #[inline]
    pub(crate) fn parent_of(tag: u8, body: &[u8]) -> Option<Context> {
        let text = match tag {
            b'Q' => body,
            // Parse: statement name, NUL, the text, NUL, parameter types.
            b'P' => {
                let name_end = body.iter().position(|&b| b == 0)?;
                let rest = body.get(name_end + 1..)?;
                &rest[..rest.iter().position(|&b| b == 0)?]
            }
            _ => return None,
        };
        if !sqlcommenter::may_carry_comment(text) {
            return None;
        }
        Self::parent_in(text)
    }

    /// The statement text of a Query or Parse body (for `statement_text`).
    pub(crate) fn text_of(tag: u8, body: &[u8]) -> &[u8] {
        let text = if tag == b'P' {
            let name_end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            body.get(name_end + 1..).unwrap_or(&[])
        } else {
            body
        };
        &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())]
    }

    fn parent_in(text: &[u8]) -> Option<Context> {
        let c = sqlcommenter::trace_context(text)?;
        if !c.parent.sampled() {
            return None;
        }
        let state = c
            .tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let sc = SpanContext::new(
            TraceId::from_bytes(c.parent.trace_id),
            SpanId::from_bytes(c.parent.parent_id),
            TraceFlags::new(c.parent.flags),
            true,
            state,
        );
        Some(Context::new().with_remote_span_context(sc))
    }

    /// The spans of one statement whose reply is complete at `done`.
    pub(crate) fn finish_statement(&self, s: Statement, done: Instant) {
        let clock = Clock::now();
        let mut common = vec![
            KeyValue::new("db.system.name", DB_SYSTEM),
            KeyValue::new("db.namespace", s.database.clone()),
        ];
        if let Some(addr) = s.server {
            common.push(KeyValue::new("server.address", addr.ip().to_string()));
            common.push(KeyValue::new("server.port", i64::from(addr.port())));
        }
        let mut wait_attr = None;
        if let Some((began, attached)) = s.pool_wait {
            let waited = attached.saturating_duration_since(began);
            if waited >= POOL_WAIT_SPAN_MIN || s.connect.is_some() {
                let mut span = self
                    .tracer
                    .span_builder("pool wait")
                    .with_kind(SpanKind::Internal)
                    .with_start_time(clock.wall(began))
                    .with_attributes(common.clone())
                    .start_with_context(&self.tracer, &s.parent);
                span.end_with_timestamp(clock.wall(attached));
            } else {
                wait_attr = Some(waited);
            }
        }
        if let Some(c) = &s.connect {
            if let Some(w) = &c.wake {
                self.wake_span(&clock, w, &s.parent, None);
            }
            self.connect_span(&clock, c, &s.parent, &common);
        }
        let start = s.sent.unwrap_or(done);
        let mut attrs = common;
        if let Some(w) = wait_attr {
            attrs.push(KeyValue::new("pgwake.pool.wait_ms", w.as_secs_f64() * 1e3));
        }
        if let Some(text) = s.text {
            attrs.push(KeyValue::new("db.query.text", text));
        }
        if let Some(code) = s.sqlstate {
            let code = String::from_utf8_lossy(&code).into_owned();
            attrs.push(KeyValue::new("db.response.status_code", code.clone()));
            attrs.push(KeyValue::new("error.type", code));
        }
        let failed = s.sqlstate.is_some();
        let mut span = self
            .tracer
            .span_builder("server execution")
            .with_kind(SpanKind::Client)
            .with_start_time(clock.wall(start))
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &s.parent);
        for (at, name, detail) in s.events {
            let mut ev = Vec::new();
            if !detail.is_empty() {
                ev.push(KeyValue::new("pgwake.detail", detail));
            }
            span.add_event_with_timestamp(name, clock.wall(at), ev);
        }
        if let Some(code) = s.sqlstate {
            span.add_event_with_timestamp(
                "error",
                clock.wall(done),
                vec![KeyValue::new(
                    "db.response.status_code",
                    String::from_utf8_lossy(&code).into_owned(),
                )],
            );
        }
        if failed {
            span.set_status(Status::error("the server answered with an error"));
        }
        span.end_with_timestamp(clock.wall(done));
    }

    /// `server connect`: the token, then DNS, TCP, TLS and login, each an
    /// event at its start with its duration.
    fn connect_span(&self, clock: &Clock, c: &ConnectTrace, parent: &Context, common: &[KeyValue]) {
        let mut attrs = common.to_vec();
        attrs.push(KeyValue::new(
            "pgwake.connect.attempts",
            i64::from(c.attempts),
        ));
        if let Some(a) = c.phases.addr {
            attrs.push(KeyValue::new("network.peer.address", a.ip().to_string()));
            attrs.push(KeyValue::new("network.peer.port", i64::from(a.port())));
        }
        let mut span = self
            .tracer
            .span_builder("server connect")
            .with_kind(SpanKind::Client)
            .with_start_time(clock.wall(c.started))
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        let mut at = c.started;
        let phases = [
            ("token", Some(c.token)),
            ("dns", c.phases.dns),
            ("tcp", c.phases.tcp),
            ("tls", c.phases.tls),
            ("auth", c.phases.auth),
        ];
        for (name, took) in phases {
            let Some(took) = took else { continue };
            let mut ev = vec![KeyValue::new(
                "pgwake.phase.duration_ms",
                took.as_secs_f64() * 1e3,
            )];
            if name == "token" && c.token_waited {
                ev.push(KeyValue::new("pgwake.token.waited", true));
                span.add_event_with_timestamp("token refresh waited", clock.wall(at), Vec::new());
            }
            span.add_event_with_timestamp(name, clock.wall(at), ev);
            at += took;
        }
        span.end_with_timestamp(clock.wall(c.ended));
    }

    /// `server wake`: under a request that waited for it (`parent`), or as
    /// a trace of its own.
    fn wake_span(&self, clock: &Clock, w: &WakeTrace, parent: &Context, trigger: Option<&str>) {
        let mut attrs = vec![
            KeyValue::new("pgwake.wake.provider", w.provider.clone()),
            KeyValue::new("pgwake.wake.state", w.state.clone()),
            KeyValue::new("pgwake.wake.waiters", i64::from(w.waiters)),
        ];
        if let Some(t) = trigger {
            attrs.push(KeyValue::new("pgwake.wake.trigger", t.to_owned()));
        }
        if let Some(a) = &w.client {
            attrs.push(KeyValue::new("client.address", a.clone()));
        }
        let mut span = self
            .tracer
            .span_builder("server wake")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.wall(w.began))
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        if let Some(e) = &w.error {
            span.set_status(Status::error(e.clone()));
        }
        span.end_with_timestamp(clock.wall(w.ended));
    }

    /// A wake as a trace of its own (what triggered it, how long it took).
    pub(crate) fn wake_trace(&self, w: &WakeTrace, trigger: &str) {
        self.wake_span(&Clock::now(), w, &Context::new(), Some(trigger));
    }

    /// A credential fetch (refresh) as a trace of its own.
    pub(crate) fn credential_trace(&self, r: &pgwake_credentials::FetchReport<'_>) {
        let clock = Clock::now();
        let mut span = self
            .tracer
            .span_builder("credential refresh")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.wall(r.began))
            .with_attributes(vec![
                KeyValue::new("pgwake.credential.source", r.source.to_owned()),
                KeyValue::new(
                    "pgwake.credential.outcome",
                    if r.error.is_some() { "failed" } else { "ok" },
                ),
            ])
            .start_with_context(&self.tracer, &Context::new());
        if let Some(e) = r.error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end_with_timestamp(clock.wall(r.began + r.took));
    }

    /// An idle stop as a trace of its own.
    pub(crate) fn idle_stop_trace(
        &self,
        began: Instant,
        provider: &str,
        idle: Duration,
        error: Option<&str>,
    ) {
        let clock = Clock::now();
        let mut span = self
            .tracer
            .span_builder("server idle stop")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.wall(began))
            .with_attributes(vec![
                KeyValue::new("pgwake.wake.provider", provider.to_owned()),
                KeyValue::new("pgwake.idle_s", idle.as_secs_f64()),
            ])
            .start_with_context(&self.tracer, &Context::new());
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end_with_timestamp(clock.wall(Instant::now()));
    }
}

/// Turns instants into wall-clock times, all against one reading.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        match self.instant.checked_duration_since(at) {
            Some(ago) => self.wall.checked_sub(ago).unwrap_or(self.wall),
            None => self.wall + at.saturating_duration_since(self.instant),
        }
    }
}
