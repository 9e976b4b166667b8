//! Pooled connections behind a NAT that silently drops idle flows (network
//! namespaces; needs root, which CI has). With keepalives below the NAT's
//! idle timeout the pooled connection survives a long idle period; without
//! them the dead connection is detected and the client's query still
//! succeeds on a fresh one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The namespaces and host-side interface, removed on drop.
struct Nat {
    id: String,
    dir: String,
}

impl Nat {
    fn new() -> Nat {
        let id = (std::process::id() % 100_000).to_string();
        let dir = format!("{}/tests/nat", env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new("bash")
            .arg(format!("{dir}/teardown.sh"))
            .arg(&id)
            .status();
        let out = Command::new("bash")
            .arg(format!("{dir}/setup.sh"))
            .arg(&id)
            .output()
            .expect("run setup.sh");
        assert!(
            out.status.success(),
            "NAT setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Nat { id, dir }
    }

    fn client_ns(&self) -> String {
        format!("pgwt{}c", self.id)
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(format!("{}/teardown.sh", self.dir))
            .arg(&self.id)
            .status();
    }
}

struct Proc {
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgwake run` inside the client namespace.
fn pgwake_in(ns: &str, config: &Path) -> Proc {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_pgwake"),
            "run",
            "--config",
        ])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = logs.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Proc { child, logs }
}

/// Runs one query with psql inside the namespace; returns its output.
fn query(
    cluster: &pgwake_testkit::Cluster,
    ns: &str,
    port: u16,
    sql: &str,
) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(cluster.bin().path("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "app",
            "-p",
        ])
        .arg(port.to_string())
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn keepalives_keep_pooled_connections_alive_through_a_nat_and_dead_ones_are_replaced() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the NAT test needs root, and CI runs as root"
        );
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let nat = Nat::new();
    let ns = nat.client_ns();
    let cluster = pgwake_testkit::Cluster::builder()
        .auth(pgwake_testkit::HostAuth::Scram)
        .user("app", "app-secret")
        .database("app", "app")
        .setting("listen_addresses", "127.0.0.1,10.231.2.2")
        .start()
        .unwrap();
    // Logins arrive from the router's address.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str("host all all 10.231.0.0/16 scram-sha-256\n");
    std::fs::write(&hba, text).unwrap();
    cluster.psql("postgres", "select pg_reload_conf()").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = |keepalive_idle: &str, port: u16| {
        let path = dir.path().join(format!("pgwake-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "[listen]\naddr = \"127.0.0.1:{port}\"\n\
                 [server]\nhost = \"10.231.2.2\"\nport = {}\nsslmode = \"disable\"\n\
                 tcp_keepalive_idle = \"{keepalive_idle}\"\ntcp_keepalive_interval = \"1s\"\n\
                 tcp_keepalive_count = 3\ntcp_user_timeout = \"3s\"\n\
                 [server.auth]\nuser = \"app\"\npassword = \"app-secret\"\n\
                 [pool]\nsize = 1\nmin_idle = 1\n",
                cluster.port()
            ),
        )
        .unwrap();
        let p = pgwake_in(&ns, &path);
        for _ in 0..200 {
            if query(&cluster, &ns, port, "select 1").is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "pgwake in the namespace did not serve: {}",
            p.logs.lock().unwrap()
        );
    };
    // Idle for longer than the NAT's 5 s flow timeout: the idle time is the
    // scenario, not a wait for something to happen.
    let idle = Duration::from_secs(12);

    // First the control: keepalive far above the NAT's timeout, so the flow
    // is gone; the dead connection is found (TCP_USER_TIMEOUT) and the query
    // runs on a new one.
    let port = pgwake_testkit::free_port();
    let p = run("2h", port);
    let before = query(&cluster, &ns, port, "select pg_backend_pid()").unwrap();
    std::thread::sleep(idle);
    let started = Instant::now();
    let after = query(&cluster, &ns, port, "select pg_backend_pid()")
        .unwrap_or_else(|e| panic!("query after idle failed: {e}\n{}", p.logs.lock().unwrap()));
    eprintln!(
        "dead pooled connection replaced; the query took {:?}",
        started.elapsed()
    );
    assert_ne!(before, after, "served by a new connection");
    assert!(p
        .logs
        .lock()
        .unwrap()
        .contains("retrying the request on a fresh server connection"));
    drop(p);

    // Keepalive every 2 s, below the NAT's 5 s: the same connection survives
    // the same idle period.
    let port = pgwake_testkit::free_port();
    let p = run("2s", port);
    let before = query(&cluster, &ns, port, "select pg_backend_pid()").unwrap();
    std::thread::sleep(idle);
    let after = query(&cluster, &ns, port, "select pg_backend_pid()")
        .unwrap_or_else(|e| panic!("query after idle failed: {e}\n{}", p.logs.lock().unwrap()));
    assert_eq!(
        before, after,
        "the pooled connection survived the idle period"
    );
}
