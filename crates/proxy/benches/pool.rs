//! Pool checkout and check-in on the hot path: one connection handed out and
//! returned, as every transaction in transaction mode does. The server is a
//! minimal stand-in that completes the login, so only the pool is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pgwake_config::{PoolMode, SslMode};
use pgwake_credentials::NoPassword;
use pgwake_proxy::pool::{Pool, PoolKey, PoolSettings};
use pgwake_proxy::server::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Accepts logins: AuthenticationOk, BackendKeyData, ReadyForQuery; then idles.
async fn stand_in_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let mut reply = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
                reply.extend([b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2]);
                reply.extend([b'Z', 0, 0, 0, 5, b'I']);
                let _ = s.write_all(&reply).await;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn checkout_checkin(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let port = stand_in_server().await;
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            sslmode: SslMode::Disable,
            connect_timeout: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 6,
            user_timeout: Duration::from_secs(30),
            tls: None,
            allow_cleartext_without_tls: false,
        };
        let settings = PoolSettings {
            mode: PoolMode::Transaction,
            size: 4,
            min_idle: 0,
            max_lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            wait_timeout: Duration::from_secs(5),
            max_prepared: 100,
            prewarm: false,
        };
        let key = PoolKey {
            database: "bench".into(),
            dbname: "bench".into(),
            user: "bench".into(),
        };
        let pool = Pool::new(
            key,
            settings,
            pgwake_proxy::pool::ServerSide {
                target: Arc::new(target),
                credentials: Arc::new(NoPassword),
            },
            None,
            Arc::new(pgwake_proxy::stats::Metrics::new()),
            CancellationToken::new(),
        );
        let p = pool.checkout().await.unwrap();
        pool.checkin(p);
        pool
    });
    c.bench_function("pool_checkout_checkin", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let p = pool.checkout().await.unwrap();
                    pool.checkin(std::hint::black_box(p));
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(pool, checkout_checkin);
criterion_main!(pool);
