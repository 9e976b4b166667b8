#![forbid(unsafe_code)]
//! `[tracing]`: an app instrumented with OpenTelemetry (psycopg 3 and its
//! instrumentation with sqlcommenter on) sends its trace context in each
//! statement; pgwake's spans land in the app's own trace, beside the app's
//! spans, at a real OTLP/HTTP receiver run by the test.
//!
//! The receiver decodes the protobuf export requests with
//! `opentelemetry-proto`; both the app and pgwake export to it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::proc::Proc;
use common::python::{ensure_venv, python_cmd, python_dir};
use common::{config_for, poll_until_async, Pgwake};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

const APP_TIMEOUT: Duration = Duration::from_secs(180);
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    start: u64,
    end: u64,
    attrs: HashMap<String, String>,
    /// (name, attributes)
    events: Vec<(String, HashMap<String, String>)>,
}

impl Span {
    fn duration_ms(&self) -> f64 {
        self.end.saturating_sub(self.start) as f64 / 1e6
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// A real OTLP/HTTP (protobuf) receiver on 127.0.0.1.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn export(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut got = spans.lock().unwrap();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attrs: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: everything accepted.
    (StatusCode::OK, Vec::new())
}

impl Receiver {
    async fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, spans }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

/// Runs tests/python/traced_requests.py to its end; its output.
async fn run_app(
    logs: &Path,
    port: u16,
    mode: &str,
    count: u32,
    otlp: Option<String>,
) -> Result<String> {
    let logs = logs.to_path_buf();
    let mode = mode.to_owned();
    tokio::task::spawn_blocking(move || {
        ensure_venv(&logs)?;
        let mut cmd = python_cmd("python");
        cmd.arg(python_dir().join("traced_requests.py"))
            .arg(&mode)
            .args([
                "--port",
                &port.to_string(),
                "--dbname",
                "app",
                "--user",
                "app",
            ])
            .args(["--count", &count.to_string()]);
        if let Some(url) = otlp {
            cmd.args(["--otlp", &url]);
        }
        Proc::spawn("traced_requests.py", cmd, logs.join(format!("{mode}.log")))?
            .finish(APP_TIMEOUT)
    })
    .await
    .context("app task")?
}

/// The trace id the app printed for each request.
fn trace_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("request "))
        .filter_map(|l| l.split_once(" trace ").map(|(_, t)| t.trim().to_owned()))
        .collect()
}

/// pgwake's spans in `trace` and the app's span each one hangs under.
fn pgwake_spans(spans: &[Span]) -> Vec<&Span> {
    spans.iter().filter(|s| s.service == "pgwake").collect()
}

fn tracing_section(rx: &Receiver) -> String {
    format!("[tracing]\notlp_endpoint = \"{}\"\n", rx.base())
}

/// pgwake in front of `cluster` with pool settings `pool`, tracing to `rx`.
fn start_traced(
    rx: &Receiver,
    cluster: &pgwake_testkit::Cluster,
    pool: &str,
    env: &[(&str, &str)],
) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = format!("{}{}", config_for(cluster, port, pool), tracing_section(rx));
    Pgwake::start_config(&toml, port, env)
}

/// Runs the app's `requests` mode (`count` requests, each a trace of its
/// own, exported to `rx`); the trace id of each.
async fn app_requests(pg: &Pgwake, rx: &Receiver, count: u32) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let otlp = Some(format!("{}/v1/traces", rx.base()));
    let out = run_app(dir.path(), pg.port, "requests", count, otlp)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\npgwake:\n{}", pg.logs()));
    let ids = trace_ids(&out);
    assert_eq!(ids.len(), count as usize, "{out}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_request_holds_pgwakes_spans_under_the_apps_database_span() {
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    let pg = start_traced(&rx, &cluster, "size = 4\nmin_idle = 0", &[]);
    let ids = app_requests(&pg, &rx, 3).await;

    // Every request's trace gets pgwake's server execution span.
    let complete = poll_until_async(SPANS_TIMEOUT, || async {
        ids.iter().all(|t| {
            rx.in_trace(t)
                .iter()
                .any(|s| s.service == "pgwake" && s.name == "server execution")
        })
    })
    .await;
    assert!(
        complete,
        "spans: {:#?}\npgwake:\n{}\n{}",
        rx.spans(),
        pg.logs(),
        common::http_get(pg.admin_port, "/metrics", Duration::from_secs(5)).1
    );

    for (i, id) in ids.iter().enumerate() {
        let spans = rx.in_trace(id);
        let request = spans
            .iter()
            .find(|s| s.service == "traced-app" && s.name == format!("request {i}"))
            .unwrap_or_else(|| panic!("the app's request span: {spans:#?}"));
        // psycopg's span for the query, child of the request.
        let db = spans
            .iter()
            .find(|s| s.service == "traced-app" && s.parent == request.span_id)
            .unwrap_or_else(|| panic!("the app's database span: {spans:#?}"));
        let ours = pgwake_spans(&spans);
        assert!(!ours.is_empty());
        for s in &ours {
            assert_eq!(s.parent, db.span_id, "{s:#?} is not under {db:#?}");
            assert_eq!(
                s.attrs.get("db.system.name").map(String::as_str),
                Some("postgresql")
            );
            // No statement text unless asked for, never parameters.
            assert!(!s.attrs.contains_key("db.query.text"), "{s:#?}");
        }
        let exec = ours.iter().find(|s| s.name == "server execution").unwrap();
        assert!(exec.end >= exec.start);
        assert!(
            exec.start >= db.start && exec.end <= db.end,
            "the server ran the statement within the app's span: {exec:#?} {db:#?}"
        );
        if i == 0 {
            // The first request after start: the pool was cold.
            assert!(ours.iter().any(|s| s.name == "pool wait"), "{ours:#?}");
            let connect = ours
                .iter()
                .find(|s| s.name == "server connect")
                .unwrap_or_else(|| panic!("no server connect span: {ours:#?}"));
            let names: Vec<&str> = connect.events.iter().map(|(n, _)| n.as_str()).collect();
            for phase in ["token", "dns", "tcp", "auth"] {
                assert!(names.contains(&phase), "{names:?}");
            }
            let phases: f64 = connect
                .events
                .iter()
                .filter_map(|(_, a)| a.get("pgwake.phase.duration_ms"))
                .map(|v| v.parse::<f64>().unwrap())
                .sum();
            let total = connect.duration_ms();
            assert!(
                (phases - total).abs() <= total * 0.10,
                "phases add up to {phases:.3} ms of {total:.3} ms: {connect:#?}"
            );
        } else {
            // A warm pool: no connect, and the wait (a connection was idle)
            // is an attribute, not a span.
            assert!(
                !ours.iter().any(|s| s.name == "server connect"),
                "{ours:#?}"
            );
            assert!(exec.attrs.contains_key("pgwake.pool.wait_ms"), "{exec:#?}");
        }
    }
    // Every span pgwake made was exported, and counted so.
    let received = rx.spans().iter().filter(|s| s.service == "pgwake").count() as f64;
    let counted = poll_until_async(SPANS_TIMEOUT, || async {
        pg.metric("pgwake_trace_spans_exported_total") == received
    })
    .await;
    assert!(
        counted,
        "{} exported, {received} received",
        pg.metric("pgwake_trace_spans_exported_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_woke_the_server_shows_the_wake_in_its_trace_and_in_one_of_its_own() {
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    cluster.stop().unwrap();
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "{}[lifecycle]\nprovider = \"command\"\nwake_timeout = \"60s\"\n[lifecycle.command]\nstatus = {:?}\nstart = {:?}\nstop = {:?}\n{}",
        config_for(&cluster, port, "size = 4\nmin_idle = 0"),
        cluster.ctl_command("status"),
        cluster.ctl_command("start"),
        cluster.ctl_command("stop"),
        tracing_section(&rx)
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let ids = app_requests(&pg, &rx, 1).await;
    assert!(cluster.is_running());
    let id = &ids[0];

    let seen = poll_until_async(SPANS_TIMEOUT, || async {
        let all = rx.spans();
        let in_request = all
            .iter()
            .any(|s| &s.trace_id == id && s.service == "pgwake" && s.name == "server wake");
        let own = all
            .iter()
            .any(|s| &s.trace_id != id && s.service == "pgwake" && s.name == "server wake");
        in_request && own
    })
    .await;
    assert!(seen, "spans: {:#?}\npgwake:\n{}", rx.spans(), pg.logs());

    let spans = rx.in_trace(id);
    let db = spans
        .iter()
        .find(|s| s.service == "traced-app" && !s.name.starts_with("request "))
        .unwrap();
    let wake = spans.iter().find(|s| s.name == "server wake").unwrap();
    assert_eq!(wake.parent, db.span_id);
    assert_eq!(
        wake.attrs.get("pgwake.wake.state").map(String::as_str),
        Some("stopped")
    );
    assert!(
        wake.attrs
            .get("pgwake.wake.provider")
            .is_some_and(|p| p.contains("command")),
        "{wake:#?}"
    );
    // The wake took the server's start: far longer than a login.
    assert!(wake.duration_ms() > 50.0, "{wake:#?}");

    let all = rx.spans();
    let background = all
        .iter()
        .find(|s| &s.trace_id != id && s.name == "server wake")
        .unwrap();
    assert_eq!(background.parent, "", "a trace of its own: {background:#?}");
    assert!(
        background
            .attrs
            .get("client.address")
            .is_some_and(|a| a.starts_with("127.0.0.1")),
        "who triggered it: {background:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_app_prepares_each_statement_once_per_server_connection() {
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    // One server connection, so every execution lands on it.
    let pg = start_traced(&rx, &cluster, "size = 1\nmin_idle = 1", &[]);
    let port = pg.port;
    let dir = tempfile::tempdir().unwrap();
    // 1,000 executions with prepare=True, each under a trace of its own:
    // 1,000 statement texts (and client-side names) differing only in
    // their traceparent comment.
    let out = run_app(dir.path(), port, "prepared", 1000, None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\npgwake:\n{}", pg.logs()));
    assert!(out.contains("prepared 1000"), "{out}");

    let series = |m: &str| format!("{m}{{database=\"app\",user=\"app\"}}");
    let misses = pg.metric(&series("pgwake_prepared_statement_misses_total"));
    let hits = pg.metric(&series("pgwake_prepared_statement_hits_total"));
    assert_eq!(misses, 1.0, "prepared on the server once (hits {hits})");
    assert!(hits >= 999.0, "hits {hits}");

    // The server connection holds that one statement, without the comment.
    let held = pg
        .psql(
            &cluster,
            "app",
            "select count(*) || ' ' || bool_or(statement like '%traceparent%') from pg_prepared_statements where name like 'pgwake\\_%' and name <> 'pgwake_probe'",
        )
        .unwrap();
    assert_eq!(held.trim(), "1 false", "{held}");

    // Every execution is still traced, those whose Parse pgwake answered
    // from the server's statement too: one server execution per trace.
    let executions = || {
        let spans = rx.spans();
        let traces: std::collections::HashSet<String> = spans
            .iter()
            .filter(|s| s.name == "server execution")
            .map(|s| s.trace_id.clone())
            .collect();
        traces.len()
    };
    let all = poll_until_async(SPANS_TIMEOUT, || async { executions() == 1000 }).await;
    assert!(all, "{} of 1000 executions traced", executions());
}

/// Runs a command from the virtualenv to its end within `limit`.
async fn run_python(
    cmd: std::process::Command,
    log: std::path::PathBuf,
    limit: Duration,
) -> Result<String> {
    tokio::task::spawn_blocking(move || Proc::spawn("python", cmd, log)?.finish(limit))
        .await
        .context("python task")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sampled_request_of_a_traced_django_site_holds_pgwake_spans() {
    const REQUESTS: u32 = 300;
    const WORKERS: u32 = 4;
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    let pg = start_traced(&rx, &cluster, "size = 4\nmin_idle = 1", &[]);
    let port = pg.port;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || ensure_venv(&logs))
        .await
        .unwrap()
        .unwrap();
    let site = python_dir().join("django_site");
    let django_env = |mut cmd: std::process::Command| {
        cmd.current_dir(&site)
            .env("DJANGO_SETTINGS_MODULE", "site_conf.settings")
            .env("DJANGO_DB_HOST", "127.0.0.1")
            .env("DJANGO_DB_PORT", port.to_string())
            .env("DJANGO_DB_NAME", "app")
            .env("DJANGO_DB_USER", "app");
        cmd
    };
    let mut migrate = python_cmd("python");
    migrate.arg("manage.py").args(["migrate", "--noinput"]);
    run_python(
        django_env(migrate),
        dir.path().join("migrate.log"),
        APP_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\npgwake:\n{}", pg.logs()));

    let http_port = pgwake_testkit::free_port();
    let mut gunicorn = python_cmd("gunicorn");
    gunicorn
        .args(["--config", "python:otel_gunicorn"])
        .args(["--workers", &WORKERS.to_string()])
        .args(["--bind", &format!("127.0.0.1:{http_port}")])
        .args(["--timeout", "60", "--graceful-timeout", "5"])
        .args(["--error-logfile", "-"])
        .arg("site_conf.wsgi:application")
        // Half the requests sampled: the app's decision is pgwake's.
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0.5")
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", rx.base()),
        );
    let gunicorn = Proc::spawn(
        "gunicorn",
        django_env(gunicorn),
        dir.path().join("gunicorn.log"),
    )
    .unwrap();
    let mut load = python_cmd("python");
    load.arg(python_dir().join("http_load.py"))
        .args(["--port", &http_port.to_string()])
        .args(["--count", &REQUESTS.to_string()])
        .args(["--threads", &WORKERS.to_string()])
        .args(["--deadline", "180"]);
    let out = run_python(load, dir.path().join("http_load.log"), APP_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:?}\n{}\npgwake:\n{}",
                gunicorn.output_tail(50),
                pg.logs()
            )
        });
    let summary = out.lines().last().unwrap_or_default().to_owned();
    assert!(summary.starts_with("http: ok"), "{out}");

    // The sampled requests: traces whose root is a Django request span for
    // a note (the app exported them; unsampled ones it did not).
    let sampled = || -> Vec<String> {
        rx.spans()
            .iter()
            .filter(|s| {
                s.service == "traced-django" && s.parent.is_empty() && s.name.contains("note")
            })
            .map(|s| s.trace_id.clone())
            .collect()
    };
    let all_have_ours = |spans: &[Span], traces: &[String]| {
        traces.iter().all(|t| {
            spans
                .iter()
                .any(|s| &s.trace_id == t && s.service == "pgwake" && s.name == "server execution")
        })
    };
    let done = poll_until_async(SPANS_TIMEOUT, || async {
        let traces = sampled();
        !traces.is_empty() && all_have_ours(&rx.spans(), &traces)
    })
    .await;
    let traces = sampled();
    let spans = rx.spans();
    let missing: Vec<&String> = traces
        .iter()
        .filter(|t| !all_have_ours(&spans, std::slice::from_ref(t)))
        .collect();
    assert!(
        done,
        "{} of {} sampled requests lack pgwake spans: {missing:?}\npgwake:\n{}",
        missing.len(),
        traces.len(),
        pg.logs()
    );
    // About half were sampled, and only those have pgwake spans.
    assert!(
        traces.len() > 50 && traces.len() < 250,
        "{} of {REQUESTS} requests sampled",
        traces.len()
    );
    let app_span_ids: std::collections::HashSet<&str> = spans
        .iter()
        .filter(|s| s.service == "traced-django")
        .map(|s| s.span_id.as_str())
        .collect();
    for s in spans.iter().filter(|s| s.service == "pgwake") {
        assert!(
            app_span_ids.contains(s.parent.as_str()),
            "a pgwake span outside a sampled request's trace: {s:#?}"
        );
    }
    drop(gunicorn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_refresh_is_a_trace_of_its_own() {
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    for (command, outcome) in [
        ("echo app-secret", "ok"),
        ("echo vault is sealed >&2; exit 2", "failed"),
    ] {
        let port = pgwake_testkit::free_port();
        let toml = format!(
            "{}{}",
            config_for(&cluster, port, "size = 2\nmin_idle = 0").replace(
                "password = \"app-secret\"",
                &format!("method = \"command\"\ncommand = {command:?}\nallow_cleartext_without_tls = true")
            ),
            tracing_section(&rx)
        );
        let pg = Pgwake::start_config(&toml, port, &[]);
        let seen = poll_until_async(SPANS_TIMEOUT, || async {
            rx.spans().iter().any(|s| {
                s.name == "credential refresh"
                    && s.attrs.get("pgwake.credential.outcome").map(String::as_str) == Some(outcome)
            })
        })
        .await;
        assert!(
            seen,
            "no {outcome} refresh: {:#?}\npgwake:\n{}",
            rx.spans(),
            pg.logs()
        );
        let span = rx
            .spans()
            .into_iter()
            .find(|s| s.attrs.get("pgwake.credential.outcome").map(String::as_str) == Some(outcome))
            .unwrap();
        assert_eq!(span.parent, "", "a trace of its own: {span:#?}");
        assert!(span.attrs.contains_key("pgwake.credential.source"));
        assert!(
            !format!("{span:?}").contains("app-secret") || outcome == "failed",
            "the secret never appears: {span:#?}"
        );
    }
}

/// A sampled traceparent with this span id as the app's span.
fn traceparent(trace: u8, span: u8, flags: &str) -> (String, String, String) {
    let trace_id = format!("{:02x}", trace).repeat(16);
    let span_id = format!("{:02x}", span).repeat(8);
    (
        format!("/*traceparent='00-{trace_id}-{span_id}-{flags}'*/"),
        trace_id,
        span_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_timeouts_are_on_the_span_and_unsampled_or_malformed_contexts_make_none() {
    let rx = Receiver::start().await;
    let cluster = common::cluster();
    let pg = start_traced(
        &rx,
        &cluster,
        "size = 1\nmin_idle = 1",
        &[("PGWAKE_TIMEOUTS_QUERY_TIMEOUT", "500ms")],
    );
    let c = pg.client().await;

    let (failing, failing_trace, failing_span) = traceparent(0x11, 0x12, "01");
    let e = c
        .simple_query(&format!("SELECT 1/0 {failing}"))
        .await
        .expect_err("division by zero");
    assert_eq!(common::code(&e), "22012");
    let (slow, slow_trace, _) = traceparent(0x21, 0x22, "01");
    let e = tokio::time::timeout(
        SPANS_TIMEOUT,
        c.simple_query(&format!("SELECT pg_sleep(30) {slow}")),
    )
    .await
    .expect("cancelled by query_timeout")
    .expect_err("cancelled");
    assert_eq!(common::code(&e), "57014");

    // Not sampled, or malformed: the statements run, and no spans come of them.
    let (unsampled, unsampled_trace, _) = traceparent(0x31, 0x32, "00");
    let long = "a".repeat(1 << 20);
    let quiet = [
        format!("SELECT 1 {unsampled}"),
        "SELECT 1 /*traceparent='00-4141-4242-01'*/".to_owned(),
        "SELECT 1 /*traceparent='01-41414141414141414141414141414141-4242424242424242-01'*/".to_owned(),
        "SELECT 1 /*traceparent='00-4141414141414141414141414141414G-4242424242424242-01'*/".to_owned(),
        "SELECT 1 /* /*traceparent='00-41414141414141414141414141414141-4242424242424242-01'*/ */".to_owned(),
        "SELECT 1 /*traceparent='00-41414141414141414141414141414141-4242424242424242-01'".to_owned() + " */ -- x",
        format!("SELECT 1 /*traceparent='00-41414141414141414141414141414141-4242424242424242-01',x='{long}'*/"),
    ];
    for q in &quiet {
        c.simple_query(q)
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", &q[..q.len().min(120)]));
    }
    // A last sampled statement: once its span is in, so are the others'
    // (one queue, exported in order).
    let (marker, marker_trace, _) = traceparent(0x51, 0x52, "01");
    c.simple_query(&format!("SELECT 1 {marker}")).await.unwrap();
    let arrived = poll_until_async(SPANS_TIMEOUT, || async {
        !rx.in_trace(&marker_trace).is_empty()
    })
    .await;
    assert!(arrived, "{:#?}", rx.spans());

    let failed = rx.in_trace(&failing_trace);
    let exec = failed
        .iter()
        .find(|s| s.name == "server execution")
        .unwrap();
    assert_eq!(exec.parent, failing_span);
    assert_eq!(
        exec.attrs
            .get("db.response.status_code")
            .map(String::as_str),
        Some("22012"),
        "{exec:#?}"
    );
    assert!(exec.events.iter().any(|(n, _)| n == "error"), "{exec:#?}");

    let timed_out = rx.in_trace(&slow_trace);
    let exec = timed_out
        .iter()
        .find(|s| s.name == "server execution")
        .unwrap();
    assert_eq!(
        exec.attrs
            .get("db.response.status_code")
            .map(String::as_str),
        Some("57014"),
        "{exec:#?}"
    );
    let timeout = exec
        .events
        .iter()
        .find(|(n, _)| n == "timeout")
        .expect("a timeout event");
    assert_eq!(
        timeout.1.get("pgwake.detail").map(String::as_str),
        Some("query")
    );

    assert!(rx.in_trace(&unsampled_trace).is_empty());
    let ours: Vec<Span> = rx
        .spans()
        .into_iter()
        .filter(|s| s.service == "pgwake")
        .collect();
    let traces: std::collections::HashSet<&str> =
        ours.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        [
            failing_trace.as_str(),
            slow_trace.as_str(),
            marker_trace.as_str()
        ]
        .into(),
        "{ours:#?}"
    );
}
