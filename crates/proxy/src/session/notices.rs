//! Telling a client what it waits for while pgwake starts the server.

use bytes::BytesMut;
use pgwake_lifecycle::Lifecycle;

use crate::client_io::ClientStream;
use crate::wake;

/// Awaits `fut`; while a wake of the server is under way, sends the client
/// a notice every few seconds so that people know what they wait for.
pub(super) async fn with_wake_notices<C: ClientStream, F: std::future::Future>(
    client: &mut C,
    lifecycle: Option<&Lifecycle>,
    mut fut: std::pin::Pin<&mut F>,
) -> F::Output {
    let Some(l) = lifecycle else {
        return fut.await;
    };
    // Most checkouts are ready at once: no timer for those.
    tokio::select! {
        biased;
        r = &mut fut => return r,
        _ = std::future::ready(()) => {}
    }
    // Boxed: rare, and it would otherwise enlarge every session's task.
    Box::pin(notify_while_waiting(client, l, fut)).await
}

async fn notify_while_waiting<C: ClientStream, F: std::future::Future>(
    client: &mut C,
    l: &Lifecycle,
    mut fut: std::pin::Pin<&mut F>,
) -> F::Output {
    let began = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(began + wake::NOTICE_EVERY, wake::NOTICE_EVERY);
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                out.clear();
                wake::waking_notice(l, began.elapsed(), &mut out);
                if !out.is_empty() && client.send(&out).await.is_err() {
                    // The client left; the checkout still completes, and the
                    // session then notices the closed socket.
                    return fut.await;
                }
            }
        }
    }
}
