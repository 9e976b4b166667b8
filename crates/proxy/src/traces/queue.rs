//! The way out for finished spans: a bounded queue and one export task.
//!
//! The SDK's own batch processor counts the spans it drops only in its
//! shutdown log; pgwake needs them in `/metrics`, so it queues them itself.
//! `on_end` never waits: a full queue drops the span and counts it. The
//! task exports a batch at a time, each bounded by `export_timeout`, so a
//! collector that never answers holds the task, never a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans sent in one export request at most.
const BATCH_MAX: usize = 512;
/// How long a span may wait for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// What became of the spans made (for `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct SpanCounts {
    pub(crate) exported: AtomicU64,
    /// The queue was full (the collector is slow or away).
    pub(crate) dropped_queue_full: AtomicU64,
    /// The export failed or took longer than `export_timeout`.
    pub(crate) dropped_export_failed: AtomicU64,
}

/// The span processor: hands finished spans to the export task.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: mpsc::Sender<SpanData>,
    counts: Arc<SpanCounts>,
}

impl Queue {
    /// The processor and the export task that drains it (to be spawned);
    /// the task ends when `stop` is cancelled, after one last export.
    pub(crate) fn new<E: SpanExporter + 'static>(
        exporter: E,
        capacity: usize,
        export_timeout: Duration,
        counts: Arc<SpanCounts>,
        stop: CancellationToken,
    ) -> (
        Queue,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = export_loop(exporter, rx, export_timeout, counts.clone(), stop);
        (Queue { tx, counts }, task)
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.counts
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, _resource: &Resource) {}
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    export_timeout: Duration,
    counts: Arc<SpanCounts>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = stop.cancelled() => None,
        };
        let stopping = first.is_none();
        batch.extend(first);
        if !stopping {
            // Gather what arrives soon after, up to a batch.
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH_MAX {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    _ => break,
                }
            }
        }
        // At shutdown: what is queued goes out in one last export.
        while stopping && batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_MAX));
            match tokio::time::timeout(export_timeout, exporter.export(spans)).await {
                Ok(Ok(())) => {
                    counts.exported.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    counts.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(error = %e, spans = n, "span export failed");
                }
                Err(_) => {
                    counts.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(spans = n, "span export timed out");
                }
            }
        }
        if stopping {
            let _ = exporter.shutdown();
            return;
        }
    }
}
