//! `pgwake doctor` against real servers: a healthy one, nothing listening, a
//! wrong password, a slow token command, TLS, and a server its provider says
//! is stopped. Outcomes only, never wall-clock speed.

mod common;

use std::process::{Command, Stdio};

use common::{cluster, pki, tls_cluster};
use pgwake_testkit::Cluster;

/// Runs `pgwake doctor --config` with `toml`: (exit code, stdout, stderr).
fn doctor(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwake.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
    cmd.arg("doctor")
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGWAKE_")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    // Shown with --nocapture, and with a failing test's output.
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config for a server on 127.0.0.1:`port` with `[server.auth]` lines `auth`.
fn config(port: u16, auth: &str) -> String {
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\nsslmode = \"disable\"\nconnect_timeout = \"3s\"\n\
         [server.auth]\nuser = \"app\"\n{auth}\n"
    )
}

fn verdict(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("verdict: "))
        .unwrap_or_else(|| panic!("no verdict line:\n{out}"))
}

/// The table row for `phase`: its result column.
fn result(out: &str, phase: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{phase} ")))
        .unwrap_or_else(|| panic!("no {phase} row:\n{out}"));
    line[phase.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

const LOGIN_PHASES: [&str; 7] = [
    "config",
    "dns",
    "tcp connect",
    "tls",
    "token",
    "auth",
    "first query",
];

fn healthy(cluster: &Cluster) {
    let (code, out, err) = doctor(&config(cluster.port(), "password = \"app-secret\""));
    assert_eq!(code, 0, "{out}{err}");
    for phase in LOGIN_PHASES {
        let want = if phase == "tls" { "skipped" } else { "ok" };
        assert_eq!(result(&out, phase), want, "{phase}:\n{out}");
    }
    assert!(!out.contains("provider state"), "no provider row: {out}");
    let v = verdict(&out);
    assert!(!v.contains("failed"), "{out}");
    assert!(out.contains("logged in as app to database app"), "{out}");
    assert!(
        !out.contains("app-secret") && !err.contains("app-secret"),
        "{out}{err}"
    );
}

#[test]
fn a_healthy_server_passes_every_phase() {
    healthy(&cluster());
}

#[test]
fn nothing_listening_names_the_tcp_connect() {
    let port = pgwake_testkit::free_port();
    let (code, out, err) = doctor(&config(port, "password = \"app-secret\""));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(result(&out, "tcp connect"), "failed", "{out}");
    assert_eq!(result(&out, "auth"), "skipped", "{out}");
    let v = verdict(&out);
    assert!(v.starts_with("TCP connect failed"), "{out}");
    assert!(
        v.contains(&format!("127.0.0.1:{port}")) && v.contains("refused"),
        "{out}"
    );
}

#[test]
fn a_wrong_password_names_authentication_and_never_prints_it() {
    let cluster = cluster();
    let wrong = "Wr0ng-Passw0rd-42";
    let (code, out, err) = doctor(&config(cluster.port(), &format!("password = \"{wrong}\"")));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(result(&out, "tcp connect"), "ok", "{out}");
    assert_eq!(result(&out, "auth"), "failed", "{out}");
    assert_eq!(result(&out, "first query"), "skipped", "{out}");
    let v = verdict(&out);
    assert!(v.starts_with("authentication failed"), "{out}");
    assert!(
        v.contains("28P01") && v.contains("refused the password/credentials"),
        "{out}"
    );
    assert!(v.contains("server.auth"), "{out}");
    assert!(!out.contains(wrong) && !err.contains(wrong), "{out}{err}");
}

#[test]
fn a_slow_token_command_is_named_as_the_slow_phase() {
    let cluster = cluster();
    let (code, out, err) = doctor(&config(
        cluster.port(),
        "method = \"command\"\ncommand = \"sleep 5; echo app-secret\"",
    ));
    assert_eq!(code, 0, "{out}{err}");
    for phase in LOGIN_PHASES {
        assert_ne!(result(&out, phase), "failed", "{phase}:\n{out}");
    }
    let v = verdict(&out);
    assert!(v.starts_with("the token is slow"), "{out}");
    assert!(v.contains("token command"), "{out}");
    // The command carries the password inline: it is never quoted.
    assert!(
        !out.contains("app-secret") && !err.contains("app-secret"),
        "{out}{err}"
    );
}

#[test]
fn tls_is_timed_and_a_certificate_for_another_name_is_named() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let cluster = tls_cluster(&pki);
    let toml = |host: &str| {
        config(cluster.port(), "password = \"app-secret\"")
            .replace("127.0.0.1", host)
            .replace(
                "sslmode = \"disable\"",
                &format!(
                    "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
                    ca.display()
                ),
            )
    };
    let (code, out, err) = doctor(&toml("localhost"));
    assert_eq!(code, 0, "{out}{err}");
    for phase in LOGIN_PHASES {
        assert_eq!(result(&out, phase), "ok", "{phase}:\n{out}");
    }
    assert!(out.contains("encrypted (sslmode = verify-full)"), "{out}");

    // The certificate names localhost only.
    let (code, out, err) = doctor(&toml("127.0.0.1"));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(result(&out, "tls"), "failed", "{out}");
    assert_eq!(result(&out, "auth"), "skipped", "{out}");
    let v = verdict(&out);
    assert!(
        v.starts_with("TLS failed") && v.contains("not valid for name \"127.0.0.1\""),
        "{out}"
    );
}

#[test]
fn a_stopped_server_is_not_a_failure() {
    // Nothing listens: the provider says stopped, so no login is tried.
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "{}[lifecycle]\nprovider = \"command\"\n[lifecycle.command]\nstatus = \"echo stopped\"\nstart = \"true\"\n",
        config(port, "password = \"app-secret\"")
    );
    let (code, out, err) = doctor(&toml);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(result(&out, "provider state"), "ok", "{out}");
    for phase in ["tcp connect", "tls", "auth", "first query"] {
        assert_eq!(result(&out, phase), "skipped", "{phase}:\n{out}");
    }
    let v = verdict(&out);
    assert!(
        v.contains("stopped") && v.contains("will start it when a client arrives"),
        "{out}"
    );
}

#[test]
fn a_bad_config_exits_2() {
    let (code, out, err) = doctor("[server]\nhots = \"x\"\n");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("server.hots"), "{err}");
    assert!(verdict(&out).contains("config"), "{out}");
}
