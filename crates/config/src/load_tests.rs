//! Loading the configuration: file, server URL, environment, validation.
use super::*;
use crate::{AuthMethod, PoolMode, SslMode};
use std::time::Duration;

fn ok(file: &str, env: &[(&str, &str)]) -> Config {
    load(Some(("test.toml", file)), None, env.iter().copied()).unwrap()
}

fn errs(file: &str, env: &[(&str, &str)]) -> Vec<String> {
    load(Some(("test.toml", file)), None, env.iter().copied())
        .unwrap_err()
        .0
}

#[test]
fn defaults_and_durations() {
    let c = ok(
        "[server]\nhost = \"db\"\n[pool]\nidle_timeout = \"15m\"\n",
        &[],
    );
    assert_eq!(c.pool.idle_timeout, Duration::from_secs(900));
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.server.port, 5432);
    assert_eq!(c.server.auth.effective_method(), AuthMethod::Trust);
}

#[test]
fn client_auth_rules_and_tls_are_checked_by_name() {
    let e = errs(
        "[server]\nhost = \"db\"\n[[client_auth.rules]]\naddress = \"10.0.0.0/33\"\nmethod = \"trust\"\n[[client_auth.rules]]\nuser = [\"a\", \"b\"]\nmethod = \"scram-sha-256\"\n[listen]\nclient_tls_mode = \"require\"\nclient_login_timeout = \"0s\"\n",
        &[],
    )
    .join("\n");
    assert!(
        e.contains("client_auth.rules[0].address = \"10.0.0.0/33\""),
        "{e}"
    );
    assert!(
        e.contains("client_auth.rules[1].method = \"scram-sha-256\" needs client_auth.file"),
        "{e}"
    );
    assert!(e.contains("needs listen.client_tls_cert"), "{e}");
    assert!(e.contains("needs listen.client_tls_key"), "{e}");
    assert!(
        e.contains("listen.client_login_timeout must be above zero"),
        "{e}"
    );
    let e = errs(
        "[server]\nhost = \"db\"\n[[client_auth.rules]]\nmethod = \"ldap\"\n",
        &[],
    )
    .join("\n");
    assert!(e.contains("client_auth.rules"), "{e}");
    // MD5 checks passwords too: it needs a user file or query.
    let e = errs(
        "[server]\nhost = \"db\"\n[[client_auth.rules]]\nmethod = \"md5\"\n",
        &[],
    )
    .join("\n");
    assert!(
        e.contains("client_auth.rules[0].method = \"md5\" needs client_auth.file"),
        "{e}"
    );

    // Loopback rules may trust on any listener; the default rules on a
    // loopback listener need no user file.
    let c = ok(
        "[server]\nhost = \"db\"\n[listen]\naddr = \"[::]:6432\"\n[[client_auth.rules]]\naddress = \"127.0.0.0/8\"\nmethod = \"trust\"\n[[client_auth.rules]]\naddress = \"::1\"\nmethod = \"trust\"\n[[client_auth.rules]]\nmethod = \"reject\"\n",
        &[],
    );
    let rules = c.client_auth.effective_rules();
    let addr = |i: usize| rules[i].client_address().unwrap();
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    assert!(addr(0).matches(ip("127.0.0.9")) && !addr(0).matches(ip("10.0.0.1")));
    assert!(addr(0).matches(ip("::ffff:127.0.0.1")), "v4-mapped peers");
    assert!(addr(1).matches(ip("::1")) && !addr(1).matches(None));
    assert!(addr(2).matches(None) && addr(2).matches(ip("192.0.2.1")));
    assert!(ok("[server]\nhost = \"db\"\n", &[])
        .client_auth
        .rules
        .is_empty());
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let e = errs(
        "[pool]\nsise = 3\nmode = \"bogus\"\n[server]\nhost = \"db\"\nprot = 1\n",
        &[],
    );
    let all = e.join("\n");
    assert!(all.contains("pool.sise"), "{all}");
    assert!(all.contains("pool.mode"), "{all}");
    assert!(all.contains("server.prot"), "{all}");
}

#[test]
fn env_overrides_file_and_names_the_variable() {
    let c = ok(
        "[server]\nhost = \"db\"\n[pool]\nsize = 5\n",
        &[
            ("PGWAKE_POOL_SIZE", "7"),
            ("PGWAKE_SERVER_AUTH_PASSWORD", "12345"),
            ("PGWAKE_POOL_MIN_IDLE", "2"),
            ("HOME", "/root"),
        ],
    );
    assert_eq!(c.pool.size, 7);
    assert_eq!(c.pool.min_idle, 2);
    assert_eq!(c.server.auth.password.as_ref().unwrap().expose(), "12345");
    assert_eq!(c.server.auth.effective_method(), AuthMethod::Password);

    let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SISE", "3")]).join("\n");
    assert!(e.contains("PGWAKE_POOL_SISE"), "{e}");
    let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SIZ", "5")]).join("\n");
    assert!(
        e.contains("PGWAKE_POOL_SIZ") && e.contains("did you mean PGWAKE_POOL_SIZE?"),
        "{e}"
    );
    let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SIZE", "lots")]).join("\n");
    assert!(
        e.contains("PGWAKE_POOL_SIZE") && e.contains("whole number"),
        "{e}"
    );
}

#[test]
fn token_methods_default_to_verify_full() {
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"command\"\ncommand = \"x\"\n",
        &[],
    );
    assert_eq!(c.server.sslmode, SslMode::VerifyFull);
    let c = ok(
        "[server]\nhost = \"db\"\n",
        &[
            ("PGWAKE_SERVER_AUTH_METHOD", "azure_managed_identity"),
            ("PGWAKE_SERVER_AUTH_USER", "id"),
        ],
    );
    assert_eq!(c.server.sslmode, SslMode::VerifyFull);
    // Chosen by the operator: kept.
    let c = ok("[server]\nhost = \"db\"\nsslmode = \"require\"\n[server.auth]\nmethod = \"command\"\ncommand = \"x\"\n", &[]);
    assert_eq!(c.server.sslmode, SslMode::Require);
    // A password keeps libpq's default.
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\npassword = \"p\"\n",
        &[],
    );
    assert_eq!(c.server.sslmode, SslMode::Prefer);
    assert!(!c.server.auth.allow_cleartext_without_tls);
}

#[test]
fn kubernetes_service_links_are_not_overrides() {
    // What the kubelet injects for Services named pgwake, pgwake-admin
    // and pgwake-server, next to real overrides.
    let mut env = vec![("PGWAKE_POOL_SIZE", "7"), ("PGWAKE_SERVER_PORT", "5433")];
    let links = [
        ("PGWAKE_SERVICE_HOST", "10.0.0.7"),
        ("PGWAKE_SERVICE_PORT", "6432"),
        ("PGWAKE_SERVICE_PORT_POSTGRES", "6432"),
        ("PGWAKE_SERVICE_PORT_ADMIN", "9930"),
        ("PGWAKE_PORT", "tcp://10.0.0.7:6432"),
        ("PGWAKE_PORT_6432_TCP", "tcp://10.0.0.7:6432"),
        ("PGWAKE_PORT_6432_TCP_PROTO", "tcp"),
        ("PGWAKE_PORT_6432_TCP_PORT", "6432"),
        ("PGWAKE_PORT_6432_TCP_ADDR", "10.0.0.7"),
        ("PGWAKE_ADMIN_SERVICE_HOST", "10.0.0.8"),
        ("PGWAKE_ADMIN_PORT", "tcp://10.0.0.8:9930"),
        ("PGWAKE_ADMIN_PORT_9930_TCP_ADDR", "10.0.0.8"),
        ("PGWAKE_SERVER_SERVICE_PORT", "6432"),
        ("PGWAKE_POOL_PORT_53_UDP", "udp://10.0.0.9:53"),
    ];
    env.extend(links);
    let c = ok("[server]\nhost = \"db\"\n", &env);
    assert_eq!(c.pool.size, 7);
    assert_eq!(c.server.port, 5433);
    // A Service named pgwake-server: its PGWAKE_SERVER_PORT is a link.
    let c = ok(
        "[server]\nhost = \"db\"\nport = 5434\n",
        &[("PGWAKE_SERVER_PORT", "tcp://10.0.0.9:6432")],
    );
    assert_eq!(c.server.port, 5434);
}

#[test]
fn peering_from_file_and_env_with_each_bad_peer_named() {
    let c = ok("[server]\nhost = \"db\"\n", &[]);
    assert!(!c.peering.enabled());
    let c = ok(
        "[server]\nhost = \"db\"\n[peering]\npeers = [\"10.0.0.5:6432\", \"[fd00::5]:6432\", \"pgwake-0.pgwake:6432\"]\n",
        &[],
    );
    assert!(c.peering.enabled());
    assert_eq!(c.peering.peers.len(), 3);
    let c = ok(
        "[server]\nhost = \"db\"\n",
        &[
            ("PGWAKE_PEERING_PEERS", "127.0.0.1:7001, 127.0.0.1:7002"),
            ("PGWAKE_PEERING_SERVICE", "pgwake-peers:6432"),
        ],
    );
    assert_eq!(c.peering.peers, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(c.peering.service.as_deref(), Some("pgwake-peers:6432"));
    assert!(c.to_toml().contains("[peering]"));
    let e = errs(
        "[server]\nhost = \"db\"\n[peering]\npeers = [\"10.0.0.5:6432\", \"10.0.0.6\", \"fd00::5:6432\", \"a b:1\", \"h:0\"]\nservice = \"pgwake-peers\"\n",
        &[],
    )
    .join("\n");
    assert!(!e.contains("peers[0]"), "{e}");
    for i in 1..5 {
        assert!(e.contains(&format!("peering.peers[{i}] = ")), "{e}");
    }
    assert!(
        e.contains("peering.service = \"pgwake-peers\" is not host:port"),
        "{e}"
    );
    let e = errs(
        "[server]\nhost = \"db\"\n[peering]\npeer = [\"a:1\"]\n",
        &[],
    )
    .join("\n");
    assert!(e.contains("peering.peer"), "{e}");
}

#[test]
fn server_url_fills_server_section() {
    let c = load(
        None,
        Some("postgres://app:p%40ss@db.example:6543/app?sslmode=disable&connect_timeout=3"),
        [],
    )
    .unwrap();
    assert_eq!(c.server.host, "db.example");
    assert_eq!(c.server.port, 6543);
    assert_eq!(c.server.auth.user.as_deref(), Some("app"));
    assert_eq!(c.server.auth.password.as_ref().unwrap().expose(), "p@ss");
    assert_eq!(c.server.dbname.as_deref(), Some("app"));
    assert_eq!(c.server.sslmode, SslMode::Disable);
    assert_eq!(c.server.connect_timeout, Duration::from_secs(3));
    assert!(load(None, Some("mysql://x@y/z"), []).is_err());
    assert!(load(None, Some("postgres://x@y/z?bogus=1"), []).is_err());
}

#[test]
fn semantic_checks() {
    let e = errs(
        "[listen]\naddr = \"0.0.0.0:6432\"\n[pool]\nsize = 2\nmin_idle = 3\n[server.auth]\nmethod = \"password\"\n",
        &[],
    )
    .join("\n");
    assert!(e.contains("listen.addr"), "{e}");
    assert!(e.contains("min_idle"), "{e}");
    assert!(e.contains("server.auth.password"), "{e}");
    assert!(e.contains("server.host"), "{e}");
}

#[test]
fn routes() {
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\nuser = \"svc\"\n[databases.app]\ndbname = \"prod\"\nmode = \"session\"\nsize = 3\n",
        &[],
    );
    let r = c.route("app").unwrap();
    assert_eq!(
        (r.dbname, r.user, r.mode, r.size),
        ("prod", Some("svc"), PoolMode::Session, 3)
    );
    assert!(c.route("other").is_none());
    let c = ok("[server]\nhost = \"db\"\n", &[]);
    assert_eq!(c.route("anything").unwrap().dbname, "anything");
    assert_eq!(c.route("anything").unwrap().user, None);
}

#[test]
fn printed_config_hides_the_password() {
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\npassword = \"hunter2\"\n",
        &[],
    );
    let text = c.to_toml();
    assert!(!text.contains("hunter2"));
    assert!(text.contains("<redacted>"));
    assert!(format!("{c:?}").contains("<redacted>") && !format!("{c:?}").contains("hunter2"));
}

#[test]
fn token_sources_need_their_keys_and_nothing_else() {
    let e = errs(
        "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_client_secret\"\nclient_id = \"c\"\ncommand = \"x\"\n",
        &[],
    )
    .join("\n");
    assert!(e.contains("server.auth.tenant_id is required"), "{e}");
    assert!(e.contains("PGWAKE_SERVER_AUTH_CLIENT_SECRET"), "{e}");
    assert!(e.contains("server.auth.command is not used"), "{e}");
    let e = errs(
        "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"command\"\nscope = \"s\"\nfetch_timeout = \"0s\"\n",
        &[],
    )
    .join("\n");
    assert!(e.contains("server.auth.command is required"), "{e}");
    assert!(e.contains("server.auth.scope"), "{e}");
    assert!(e.contains("fetch_timeout"), "{e}");
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_client_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nrefresh_margin = \"10m\"\n",
        &[("PGWAKE_SERVER_AUTH_CLIENT_SECRET", "sp-s3cr3t")],
    );
    assert_eq!(c.server.auth.refresh_margin, Duration::from_secs(600));
    assert_eq!(
        c.server.auth.client_secret.as_ref().unwrap().expose(),
        "sp-s3cr3t"
    );
    assert!(!c.to_toml().contains("sp-s3cr3t") && !format!("{c:?}").contains("sp-s3cr3t"));
    let c = ok(
        "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_managed_identity\"\nclient_id = \"c\"\n",
        &[],
    );
    assert_eq!(
        c.server.auth.effective_method(),
        AuthMethod::AzureManagedIdentity
    );
}

#[test]
fn a_database_server_takes_what_it_leaves_out_from_server_but_not_its_login() {
    let c = ok(
        "[server]\nhost = \"main\"\ntcp_keepalive_idle = \"45s\"\nsslmode = \"disable\"\n\
         [server.auth]\nuser = \"app\"\npassword = \"main-secret\"\n\
         [databases.app]\n\
         [databases.reports]\n[databases.reports.server]\nhost = \"other\"\nport = 5433\n\
         [databases.reports.server.auth]\nuser = \"reporter\"\npassword = \"other-secret\"\n\
         [databases.tokens]\n[databases.tokens.server]\nhost = \"azure\"\n\
         [databases.tokens.server.auth]\nmethod = \"azure_managed_identity\"\nuser = \"id\"\n",
        &[],
    );
    let reports = c.databases["reports"].server.as_ref().expect("own server");
    assert_eq!((reports.host.as_str(), reports.port), ("other", 5433));
    assert_eq!(reports.tcp_keepalive_idle, Duration::from_secs(45));
    assert_eq!(
        reports.auth.password.as_ref().unwrap().expose(),
        "other-secret"
    );
    assert_eq!(c.route("reports").unwrap().user, Some("reporter"));
    assert!(c.route("reports").unwrap().own_server);
    assert!(!c.route("app").unwrap().own_server);
    assert_eq!(reports.sslmode, SslMode::Disable, "inherited");
    // A token login of its own gets verify-full unless it says otherwise,
    // whatever the main server's sslmode.
    let tokens = c.databases["tokens"].server.as_ref().expect("own server");
    assert!(tokens.auth.password.is_none(), "no password inherited");
    assert_eq!(tokens.sslmode, SslMode::VerifyFull);
}

#[test]
fn tracing_is_off_by_default_and_reads_the_file_then_otel_variables() {
    let c = ok("[server]\nhost = \"db\"\n", &[]);
    assert!(!c.tracing.enabled());
    assert_eq!(c.tracing.service_name, "pgwake");

    let c = ok(
        "[server]\nhost = \"db\"\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nexport_timeout = \"2s\"\n[tracing.resource_attributes]\n\"deployment.environment\" = \"prod\"\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "db-proxy"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=data"),
        ],
    );
    assert_eq!(
        c.tracing.traces_url().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(c.tracing.export_timeout, Duration::from_secs(2));
    // The file is silent on these: the standard variables fill them.
    assert_eq!(c.tracing.service_name, "db-proxy");
    assert_eq!(
        c.tracing
            .resource_attributes
            .get("deployment.environment")
            .map(String::as_str),
        Some("prod")
    );
    assert!(!c.tracing.resource_attributes.contains_key("team"));

    let c = ok(
        "[server]\nhost = \"db\"\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=data, region = west"),
        ],
    );
    assert_eq!(
        c.tracing.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        c.tracing
            .resource_attributes
            .get("region")
            .map(String::as_str),
        Some("west")
    );

    let c = ok(
        "[server]\nhost = \"db\"\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/traces",
            ),
            ("PGWAKE_TRACING_SERVICE_NAME", "from-pgwake-var"),
            ("OTEL_SERVICE_NAME", "from-otel-var"),
        ],
    );
    assert_eq!(
        c.tracing.traces_url().as_deref(),
        Some("http://traces:4318/v1/traces")
    );
    assert_eq!(c.tracing.service_name, "from-pgwake-var");
}

#[test]
fn tracing_keys_are_checked_by_name() {
    let e = errs(
        "[server]\nhost = \"db\"\n[tracing]\notlp_endpoint = \"collector:4318\"\nexport_timeout = \"0s\"\nqueue_size = 1\n",
        &[],
    )
    .join("\n");
    assert!(
        e.contains("tracing.otlp_endpoint = \"collector:4318\""),
        "{e}"
    );
    assert!(e.contains("tracing.export_timeout"), "{e}");
    assert!(e.contains("tracing.queue_size"), "{e}");

    let e = errs(
        "[server]\nhost = \"db\"\n[tracing]\nendpoint = \"http://c:4318\"\n",
        &[],
    )
    .join("\n");
    assert!(
        e.contains("tracing.endpoint") || e.contains("tracing: unknown field `endpoint`"),
        "{e}"
    );
    let e = errs(
        "[server]\nhost = \"db\"\n",
        &[("PGWAKE_TRACING_ENDPONT", "http://c:4318")],
    )
    .join("\n");
    assert!(e.contains("PGWAKE_TRACING_ENDPONT"), "{e}");
}

#[test]
fn a_collector_password_in_the_tracing_endpoint_is_never_shown() {
    let c = ok(
        "[server]\nhost = \"db\"\n[tracing]\notlp_endpoint = \"https://pgwake:s3cret@collector:4318\"\n",
        &[],
    );
    // Sent to the collector as configured; shown without the credentials.
    assert_eq!(
        c.tracing.traces_url().as_deref(),
        Some("https://pgwake:s3cret@collector:4318/v1/traces")
    );
    let shown = c.tracing.traces_url_shown().unwrap_or_default();
    assert_eq!(shown, "https://***:***@collector:4318/v1/traces");
    let written = c.to_toml();
    assert!(
        written.contains("https://***:***@collector:4318"),
        "{written}"
    );
    assert!(
        c.flatten()
            .iter()
            .all(|(_, v)| !v.contains("s3cret") && !written.contains("s3cret")),
        "{written}"
    );
    let plain = ok(
        "[server]\nhost = \"db\"\n[tracing]\notlp_endpoint = \"http://collector:4318\"\n",
        &[],
    );
    assert_eq!(
        plain.tracing.traces_url_shown().as_deref(),
        Some("http://collector:4318/v1/traces")
    );

    let e = errs(
        "[server]\nhost = \"db\"\n[tracing]\notlp_endpoint = \"ftp://pgwake:s3cret@collector:4318\"\n",
        &[],
    )
    .join("\n");
    assert!(
        e.contains("tracing.otlp_endpoint = \"ftp://***:***@collector:4318"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}
