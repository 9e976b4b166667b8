#![forbid(unsafe_code)]
//! Every way deploy/ runs pgwake, started as its platform would start it.
//! `deploy/validate/kubelet.py` works out from the manifests what the
//! kubelet, Azure Container Apps or systemd would run: the command line, the
//! whole environment (the image's, service links, the workload identity
//! webhook's, the platform's), the mounted files, the user and the probes.
//! Here the real binary starts from that plan in front of a local
//! PostgreSQL, must pass the probes as the manifest writes them, serve the
//! clients the manifests document, and stop cleanly within the time the
//! platform gives it.
//!
//! The one deviation: the files live under a temporary directory, and every
//! path under the prefixes they use (/etc/pgwake, /run/pgwake, ...) is
//! rewritten to point there, in arguments, variables and file contents
//! alike. Besides that, each run overrides only what points pgwake at the
//! local server and the fakes instead of Azure, and prints each override
//! with its reason (see `overrides`).
//!
//! To check another build or another deploy/ tree (an older binary against
//! a manifest with a line removed, say), set KUBELET_TEST_PGWAKE=BINARY and
//! KUBELET_TEST_DEPLOY=DIR.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::deployenv::{deploy, run, venv_bin};
use common::proc::Proc;
use common::{is_root, pki_for, Pki};
use pgwake_config::{AuthMethod, Config, ProviderKind};
use pgwake_testkit::azure_arm::{FakeArm, RESOURCE_ID};
use pgwake_testkit::azure_identity::FakeIdentity;
use pgwake_testkit::{free_port, Cluster};

const PLAN_TIMEOUT: Duration = Duration::from_secs(120);
/// Waiting for a process without probes to listen, for a log line, for a
/// client's `select 1`.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The tenant the emulated cluster's workload identity webhook names.
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The user and password of the client user list (the Secret's material).
const CLIENT_USER: &str = "app";
const CLIENT_PASSWORD: &str = "app-secret";
/// The Kubernetes version the emulated kubelet names in its probes.
const KUBE_PROBE: &str = "kube-probe/1.32";

/// Every plan kubelet.py makes; a new manifest must be added here, with a
/// test of its own.
const PLANS: &[&str] = &[
    "azure-containerapp-pgwake",
    "kubernetes-shared-pgwake-pgwake",
    "kubernetes-sidecar-shop-pgwake",
    "systemd-pgwake",
];

#[test]
fn every_way_deploy_runs_pgwake_has_a_plan() {
    let names: Vec<String> = plans().into_keys().collect();
    assert_eq!(names, PLANS, "kubelet.py's plans");
}

#[test]
fn kubernetes_shared_deployment_starts_serves_and_stops_as_the_kubelet_runs_it() {
    run_plan("kubernetes-shared-pgwake-pgwake");
}

#[test]
fn kubernetes_sidecar_starts_serves_and_stops_as_the_kubelet_runs_it() {
    run_plan("kubernetes-sidecar-shop-pgwake");
}

#[test]
fn container_app_starts_serves_and_stops_as_container_apps_runs_it() {
    run_plan("azure-containerapp-pgwake");
}

#[test]
fn systemd_unit_starts_serves_an_app_user_on_its_socket_reloads_and_stops() {
    run_plan("systemd-pgwake");
}

// --- Plans -----------------------------------------------------------------

#[derive(Debug, Default)]
struct Plan {
    source: String,
    /// Where the platform has the pgwake binary.
    binary: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    files: Vec<PlanFile>,
    dirs: Vec<PlanDir>,
    roots: Vec<String>,
    /// `(uid, gid)`, `("dynamic", name)` or `(name, name)`.
    user: Option<(String, String)>,
    umask: Option<String>,
    nofile: Option<String>,
    no_new_privs: bool,
    probes: Vec<Probe>,
    prestop: u64,
    grace: u64,
    reload: Vec<String>,
    /// (pgwake's port as the manifests know it, URL with `{{port}}`).
    clients: Vec<(u16, String)>,
    /// The OS user the clients run as (made when missing).
    client_user: Option<String>,
}

#[derive(Debug)]
struct PlanFile {
    path: String,
    mode: u32,
    owned_by_user: bool,
    content: Content,
}

#[derive(Debug)]
enum Content {
    Text(String),
    Material(String),
}

#[derive(Debug)]
struct PlanDir {
    path: String,
    mode: u32,
    owned_by_user: bool,
}

#[derive(Debug, Clone)]
struct Probe {
    kind: String,
    initial: u64,
    period: u64,
    timeout: u64,
    failure: u64,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Exec(Vec<String>),
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape \\{other:?} in a plan"),
        }
    }
    out
}

impl Plan {
    fn parse(text: &str) -> Plan {
        let mut p = Plan::default();
        for line in text.lines() {
            let f: Vec<String> = line.split('\t').map(unescape).collect();
            let rest = &f[1..];
            let num = |s: &str| -> u64 {
                s.parse()
                    .unwrap_or_else(|_| panic!("{s:?} is not a number in {line:?}"))
            };
            let mode = |s: &str| u32::from_str_radix(s, 8).unwrap();
            match f[0].as_str() {
                "source" => p.source = rest[0].clone(),
                "binary" => p.binary = rest[0].clone(),
                "argv" => p.argv = rest.to_vec(),
                "env" => p.env.push((rest[0].clone(), rest[1].clone())),
                "file" => p.files.push(PlanFile {
                    path: rest[0].clone(),
                    mode: mode(&rest[1]),
                    owned_by_user: rest[2] == "user",
                    content: match rest[3].as_str() {
                        "text" => Content::Text(rest[4].clone()),
                        "material" => Content::Material(rest[4].clone()),
                        other => panic!("unknown file kind {other:?}"),
                    },
                }),
                "dir" => p.dirs.push(PlanDir {
                    path: rest[0].clone(),
                    mode: mode(&rest[1]),
                    owned_by_user: rest[2] == "user",
                }),
                "root" => p.roots.push(rest[0].clone()),
                "user" => p.user = Some((rest[0].clone(), rest[1].clone())),
                "umask" => p.umask = Some(rest[0].clone()),
                "nofile" => p.nofile = Some(rest[0].clone()),
                "nonewprivs" => p.no_new_privs = true,
                "probe" => p.probes.push(Probe {
                    kind: rest[0].clone(),
                    initial: num(&rest[2]),
                    period: num(&rest[3]),
                    timeout: num(&rest[4]),
                    failure: num(&rest[6]),
                    action: match rest[1].as_str() {
                        "http" => Action::Http {
                            port: rest[7].parse().unwrap(),
                            path: rest[8].clone(),
                        },
                        "tcp" => Action::Tcp {
                            port: rest[7].parse().unwrap(),
                        },
                        "exec" => Action::Exec(rest[7..].to_vec()),
                        other => panic!("unknown probe type {other:?}"),
                    },
                }),
                "prestop" => p.prestop = num(&rest[0]),
                "grace" => p.grace = num(&rest[0]),
                "reload" => p.reload = rest.to_vec(),
                "client" => p.clients.push((rest[0].parse().unwrap(), rest[1].clone())),
                "clientuser" => p.client_user = Some(rest[0].clone()),
                other => panic!("unknown plan line {other:?}: {line:?}"),
            }
        }
        p
    }
}

/// kubelet.py's plans, by name.
fn plans() -> BTreeMap<String, Plan> {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(deploy().join("validate/kubelet.py"))
        .arg(out.path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(dir) = std::env::var_os("KUBELET_TEST_DEPLOY") {
        cmd.arg("--deploy").arg(dir);
    }
    run("kubelet.py", cmd, logs.path(), PLAN_TIMEOUT)
        .unwrap_or_else(|e| panic!("kubelet.py cannot plan the manifests: {e:#}"));
    let mut all = BTreeMap::new();
    for entry in fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        all.insert(name, Plan::parse(&fs::read_to_string(&path).unwrap()));
    }
    all
}

// --- The files, under a directory of their own -------------------------------

/// The material secrets and volumes hold in the test.
struct Material {
    pki: Pki,
    federated_token: String,
}

impl Material {
    fn new() -> Material {
        Material {
            // The server, the fake Entra endpoint and pgwake's client TLS are
            // all on 127.0.0.1.
            pki: pki_for(&["127.0.0.1", "localhost"]),
            federated_token: format!(
                "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.{:016x}",
                rand::random::<u64>()
            ),
        }
    }

    fn bytes(&self, kind: &str) -> String {
        match kind {
            "tls-cert" => self.pki.cert_pem.clone(),
            "tls-key" => self.pki.key_pem.clone(),
            "ca-bundle" => self.pki.ca_pem.clone(),
            "federated-token" => self.federated_token.clone(),
            // PgBouncer's userlist.txt format, plain passwords.
            "userlist" => format!(
                "\"{CLIENT_USER}\" \"{CLIENT_PASSWORD}\"\n\"pgwake_admin\" \"admin-secret\"\n"
            ),
            other => panic!("no test material of kind {other:?}"),
        }
    }
}

/// A directory standing for `/`, for the prefixes the plan's files use.
struct Root {
    dir: tempfile::TempDir,
    /// Longest first, so that the most specific prefix wins.
    prefixes: Vec<String>,
}

impl Root {
    fn new(prefixes: &[String]) -> Root {
        let dir = tempfile::Builder::new()
            .prefix("pgwake-root-")
            .tempdir_in("/tmp")
            .unwrap();
        // The service's user and the app's user must reach what is inside.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut prefixes = prefixes.to_vec();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Root { dir, prefixes }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// `text` with every path under a prefix moved under this directory.
    fn rewrite(&self, text: &str) -> String {
        let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
        let base = self.dir.path().to_str().unwrap();
        let mut out = String::with_capacity(text.len());
        let mut prev: Option<char> = None;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if prev.is_none_or(|c| !path_char(c)) {
                let found = self.prefixes.iter().find(|p| {
                    rest.starts_with(p.as_str())
                        && rest[p.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| c == '/' || !path_char(c))
                });
                if let Some(p) = found {
                    out.push_str(base);
                    out.push_str(p);
                    i += p.len();
                    prev = p.chars().last();
                    continue;
                }
            }
            let c = rest.chars().next().unwrap();
            out.push(c);
            prev = Some(c);
            i += c.len_utf8();
        }
        out
    }

    /// Makes the directories leading to `p` (0755, as an image or the host
    /// has them).
    fn make_parents(&self, p: &Path) {
        let mut missing: Vec<&Path> = p.ancestors().skip(1).take_while(|a| !a.exists()).collect();
        missing.reverse();
        for d in missing {
            fs::create_dir(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Lays out the plan's directories and files under `root`.
fn lay_out(plan: &Plan, root: &Root, material: &Material, binary: &Path, ids: Option<(u32, u32)>) {
    let chown = |path: &Path, owned_by_user: bool| {
        if let (true, Some((uid, gid))) = (owned_by_user, ids) {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    };
    for d in &plan.dirs {
        let path = root.path(&d.path);
        root.make_parents(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(d.mode)).unwrap();
        chown(&path, d.owned_by_user);
    }
    for f in &plan.files {
        let path = root.path(&f.path);
        root.make_parents(&path);
        match &f.content {
            Content::Material(kind) if kind == "pgwake-binary" => {
                // The binary under test, at the path the image or the unit
                // has it (a link: it is large).
                fs::hard_link(binary, &path)
                    .or_else(|_| fs::copy(binary, &path).map(|_| ()))
                    .unwrap();
                continue;
            }
            Content::Material(kind) => fs::write(&path, material.bytes(kind)).unwrap(),
            Content::Text(text) => fs::write(&path, root.rewrite(text)).unwrap(),
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode)).unwrap();
        chown(&path, f.owned_by_user);
    }
}

// --- Users -----------------------------------------------------------------

/// `(uid, gid)` of a user in /etc/passwd.
fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
}

/// The ids the plan's user has on this machine: numeric ones as they are; a
/// systemd dynamic user gets a free id in systemd's dynamic range; a named
/// user is made (as a system user) when missing.
fn user_ids(user: &(String, String)) -> (u32, u32) {
    let (who, group) = user;
    if let (Ok(uid), Ok(gid)) = (who.parse(), group.parse()) {
        return (uid, gid);
    }
    if who == "dynamic" {
        let passwd = fs::read_to_string("/etc/passwd").unwrap();
        let group = fs::read_to_string("/etc/group").unwrap();
        let used = |id: u32| {
            let id = format!(":{id}:");
            passwd.contains(&id) || group.contains(&id)
        };
        // systemd's range for DynamicUser= (61184-65519).
        let start = 61184 + std::process::id() % 4000;
        let uid = (start..=65519)
            .chain(61184..start)
            .find(|&id| !used(id))
            .expect("a free id for the dynamic user");
        return (uid, uid);
    }
    if passwd_ids(who).is_none() {
        let made = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin"])
            .arg(who)
            .status()
            .unwrap();
        assert!(made.success(), "useradd {who}");
    }
    passwd_ids(who).unwrap()
}

/// A command that runs `argv` with the plan's process settings: the umask
/// and file limit (as systemd sets them, before dropping privileges), then
/// the user, without new privileges.
fn as_planned(plan: &Plan, ids: Option<(u32, u32)>, argv: &[String]) -> Command {
    let mut wrapped: Vec<String> = Vec::new();
    if plan.umask.is_some() || plan.nofile.is_some() {
        let mut script = String::new();
        if let Some(u) = &plan.umask {
            script.push_str(&format!("umask {u} && "));
        }
        if let Some(n) = &plan.nofile {
            // Where even root may not raise the hard limit (a container
            // without CAP_SYS_RESOURCE), the hard limit it is.
            script.push_str(&format!(
                "{{ ulimit -n {n} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; }} && "
            ));
        }
        script.push_str("exec \"$@\"");
        wrapped.extend(["sh".into(), "-c".into(), script, "sh".into()]);
    }
    if let Some((uid, gid)) = ids {
        wrapped.extend([
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ]);
        if plan.no_new_privs {
            wrapped.push("--no-new-privs".into());
        }
        wrapped.push("--".into());
    }
    wrapped.extend(argv.iter().cloned());
    let mut cmd = Command::new(&wrapped[0]);
    cmd.args(&wrapped[1..]).current_dir("/");
    cmd
}

// --- Fakes for Azure ---------------------------------------------------------

/// Microsoft Entra ID's token endpoint for workload identity
/// (`POST {authority}/{tenant}/oauth2/v2.0/token`, a client assertion from
/// the federated token file), over HTTPS with the test CA's certificate, as
/// azure_identity accepts only an https authority. A token for Azure
/// Database for PostgreSQL becomes the role's password.
struct FakeEntra {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

struct EntraExpects {
    tenant: String,
    client_id: String,
    assertion: String,
    role: String,
    cluster: Arc<Cluster>,
}

impl FakeEntra {
    fn start(pki: &Pki, expects: EntraExpects) -> FakeEntra {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let expects = Arc::new(expects);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let (config, expects) = (config.clone(), expects.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_entra(tcp, config, &expects) {
                        eprintln!("fake Entra: {e:#}");
                    }
                });
            }
        });
        FakeEntra { addr, stop }
    }

    fn authority_host(&self) -> String {
        format!("https://{}/", self.addr)
    }
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_entra(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    expects: &EntraExpects,
) -> anyhow::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(buf.len() < 65536, "request head too large");
        let n = tls.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = tls.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let mut request = head.split_whitespace();
    let (method, path) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let (status, json) = entra_answer(method, path, &body, expects);
    write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn entra_answer(method: &str, path: &str, body: &str, e: &EntraExpects) -> (&'static str, String) {
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let refuse = |status, code: u32, why: &str| {
        (
            status,
            format!(
                "{{\"error\":\"invalid_request\",\"error_description\":\"AADSTS{code}: {why}\",\"error_codes\":[{code}]}}"
            ),
        )
    };
    let postgres = "https://ossrdbms-aad.database.windows.net/.default";
    let arm = "https://management.azure.com/.default";
    if method != "POST" || path != format!("/{}/oauth2/v2.0/token", e.tenant) {
        return refuse("404 Not Found", 90002, "no such tenant or endpoint");
    }
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse("400 Bad Request", 9002313, "not a client assertion grant");
    }
    if field("client_id") != e.client_id {
        return refuse("400 Bad Request", 700016, "unknown client id");
    }
    if field("client_assertion") != e.assertion {
        return refuse(
            "401 Unauthorized",
            700211,
            "assertion does not match the federated token",
        );
    }
    let scope = field("scope");
    if scope != postgres && scope != arm {
        return refuse("400 Bad Request", 70011, "unknown scope");
    }
    let token = format!(
        "eyJ0eXAiOiJKV1QifQ.entra{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    if scope == postgres {
        let role = e.role.replace('\'', "''");
        let sql = format!(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L VALID UNTIL %L', '{role}', '{token}', now() + interval '1 hour'); END $$"
        );
        if let Err(err) = e.cluster.psql("postgres", &sql) {
            let why = format!("{err:#}").replace(['"', '\\', '\n'], " ");
            return refuse("500 Internal Server Error", 0, &why);
        }
    }
    (
        "200 OK",
        format!(
            "{{\"token_type\":\"Bearer\",\"expires_in\":3600,\"ext_expires_in\":3600,\"access_token\":\"{token}\"}}"
        ),
    )
}

// --- Probes and clients ------------------------------------------------------

/// One probe attempt, as the kubelet makes it; `Ok` with what answered.
fn probe_once(
    probe: &Probe,
    port: impl Fn(u16) -> u16,
    exec: impl Fn(&[String], Duration) -> Result<String, String>,
) -> Result<String, String> {
    let timeout = Duration::from_secs(probe.timeout.max(1));
    match &probe.action {
        Action::Http { port: p, path } => {
            let local = port(*p);
            let addr = SocketAddr::from(([127, 0, 0, 1], local));
            let mut s =
                TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(timeout)).unwrap();
            s.set_write_timeout(Some(timeout)).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{local}\r\nUser-Agent: {KUBE_PROBE}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("send: {e}"))?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)
                .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
            let text = String::from_utf8_lossy(&raw);
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not HTTP: {text:?}"))?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.trim())
                .unwrap_or("");
            if (200..400).contains(&status) {
                Ok(format!("{status} {body}"))
            } else {
                Err(format!("{status} {body}"))
            }
        }
        Action::Tcp { port: p } => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port(*p)));
            TcpStream::connect_timeout(&addr, timeout)
                .map(|_| "connected".to_owned())
                .map_err(|e| format!("connect: {e}"))
        }
        Action::Exec(argv) => exec(argv, timeout),
    }
}

// --- The run -------------------------------------------------------------------

/// The process environment pgwake reads for its configuration (placeholders
/// filled, paths rewritten), the config file and server URL it would use,
/// and the configuration that makes.
fn effective_config(argv: &[String], env: &[(String, String)]) -> Config {
    let var = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let arg = |flags: &[&str]| {
        argv.iter().enumerate().find_map(|(i, a)| {
            flags.iter().find_map(|f| {
                if a == f {
                    argv.get(i + 1).cloned()
                } else {
                    a.strip_prefix(&format!("{f}=")).map(str::to_owned)
                }
            })
        })
    };
    let path = arg(&["--config", "-c"]).or_else(|| var("PGWAKE_CONFIG"));
    let url = arg(&["--server-url"]).or_else(|| var("PGWAKE_SERVER_URL"));
    let text = path
        .as_ref()
        .map(|p| fs::read_to_string(p).unwrap_or_else(|e| panic!("the config file {p}: {e}")));
    let file = path.as_deref().zip(text.as_deref());
    pgwake_config::load(
        file,
        url.as_deref(),
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap_or_else(|e| panic!("the plan's configuration does not load:\n{e}"))
}

/// Fills `{{name}}` placeholders; an unknown one fails the test.
fn fill(text: &str, values: &HashMap<&str, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(
        !out.contains("{{"),
        "a placeholder the test does not fill: {out}"
    );
    out
}

fn has_placeholder(plan: &Plan, name: &str) -> bool {
    let p = format!("{{{{{name}}}}}");
    plan.env.iter().any(|(_, v)| v.contains(&p))
}

/// What stands in for Azure and the platform, and the overrides that point
/// pgwake at it and at the local server, each with its reason.
struct Platform {
    overrides: Vec<(String, String, String)>,
    /// Placeholder values of the plan (`{{authority_host}}`, ...).
    values: HashMap<&'static str, String>,
    /// pgwake's ports as the manifests know them -> the local ones.
    ports: HashMap<u16, u16>,
    // The fakes before their runtime, which they need while dropped.
    _entra: Option<FakeEntra>,
    _identity: Option<FakeIdentity>,
    _arm: Option<FakeArm>,
    _rt: tokio::runtime::Runtime,
}

impl Platform {
    /// Starts the fakes `config` needs and works out the overrides.
    fn serve(run: &Prepared, cluster: &Arc<Cluster>) -> Platform {
        let (name, plan, config) = (run.name, run.plan, &run.config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut values = run.values.clone();
        let mut overrides: Vec<(String, String, String)> = Vec::new();
        let mut ports = HashMap::new();
        let listen = config.listen.socket_addr().unwrap();
        let local = free_port();
        ports.insert(listen.port(), local);
        overrides.push((
            "PGWAKE_LISTEN_ADDR".into(),
            format!("127.0.0.1:{local}"),
            format!("a free port on 127.0.0.1 for {listen}"),
        ));
        if let Some(admin) = config.admin.socket_addr() {
            let local = free_port();
            ports.insert(admin.port(), local);
            overrides.push((
                "PGWAKE_ADMIN_ADDR".into(),
                format!("127.0.0.1:{local}"),
                format!("a free port on 127.0.0.1 for {admin}; probes follow"),
            ));
        }
        overrides.push((
            "PGWAKE_SERVER_HOST".into(),
            "127.0.0.1".into(),
            format!("the local server instead of {}", config.server.host),
        ));
        overrides.push((
            "PGWAKE_SERVER_PORT".into(),
            cluster.port().to_string(),
            "the local server's port".into(),
        ));
        if run.var("SSL_CERT_FILE").is_none() && config.server.sslrootcert.is_none() {
            let ca = run.root.path("test-ca.pem");
            fs::write(&ca, &run.material.pki.ca_pem).unwrap();
            fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).unwrap();
            overrides.push((
                "SSL_CERT_FILE".into(),
                ca.to_str().unwrap().into(),
                "the host's roots lack the test CA that signed the server's certificate".into(),
            ));
        }
        let role = run.role.clone();
        let method = config.server.auth.effective_method();
        let entra = match method {
            AuthMethod::AzureWorkloadIdentity => {
                assert!(
                    has_placeholder(plan, "authority_host"),
                    "{name}: azure_workload_identity, but no workload identity webhook variables"
                );
                let entra = FakeEntra::start(
                    &run.material.pki,
                    EntraExpects {
                        tenant: run.var("AZURE_TENANT_ID").unwrap_or_default(),
                        client_id: run.var("AZURE_CLIENT_ID").unwrap_or_default(),
                        assertion: run.material.federated_token.clone(),
                        role: role.clone(),
                        cluster: cluster.clone(),
                    },
                );
                values.insert("authority_host", entra.authority_host());
                Some(entra)
            }
            AuthMethod::AzureManagedIdentity | AuthMethod::Password | AuthMethod::Trust => None,
            other => panic!(
                "{name}: server.auth.method {} is not emulated",
                other.name()
            ),
        };
        let identity = (method == AuthMethod::AzureManagedIdentity).then(|| {
            let fake = rt
                .block_on(FakeIdentity::start(cluster, &role, Duration::from_secs(3600)))
                .unwrap();
            let env = fake.env();
            if has_placeholder(plan, "identity_endpoint") {
                values.insert("identity_endpoint", env[0].1.clone());
                values.insert("identity_header", env[1].1.clone());
            } else {
                for (k, v) in env {
                    overrides.push((
                        k.into(),
                        v,
                        "a VM's IMDS endpoint (169.254.169.254) cannot be served on 127.0.0.1; the same credential's App Service protocol can".into(),
                    ));
                }
            }
            fake
        });
        let arm = (config.lifecycle.provider == ProviderKind::Azure).then(|| {
            let arm = rt.block_on(FakeArm::start(cluster.clone())).unwrap();
            overrides.push((
                "PGWAKE_LIFECYCLE_ARM_ENDPOINT".into(),
                arm.endpoint(),
                "the fake Azure Resource Manager instead of management.azure.com".into(),
            ));
            overrides.push((
                "PGWAKE_LIFECYCLE_RESOURCE_ID".into(),
                RESOURCE_ID.into(),
                "the resource the fake serves".into(),
            ));
            arm
        });
        Platform {
            overrides,
            values,
            ports,
            _entra: entra,
            _identity: identity,
            _arm: arm,
            _rt: rt,
        }
    }
}

/// A plan's files laid out, and the configuration they make before any
/// override: the role the server needs, the ports to move.
struct Prepared<'a> {
    name: &'a str,
    plan: &'a Plan,
    root: Root,
    material: Material,
    /// The plan's user's ids on this machine; `None`: the current user.
    ids: Option<(u32, u32)>,
    argv: Vec<String>,
    values: HashMap<&'static str, String>,
    config: Config,
    role: String,
}

impl<'a> Prepared<'a> {
    fn new(name: &'a str, plan: &'a Plan, switch_users: bool) -> Prepared<'a> {
        let material = Material::new();
        let root = Root::new(&plan.roots);
        let ids = plan.user.as_ref().filter(|_| switch_users).map(user_ids);
        let binary = std::env::var_os("KUBELET_TEST_PGWAKE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgwake")));
        assert!(
            plan.files.iter().any(|f| f.path == plan.binary),
            "{name}: the plan does not install pgwake"
        );
        lay_out(plan, &root, &material, &binary, ids);
        let values = HashMap::from([
            ("tenant_id", TENANT.to_owned()),
            ("client_user", CLIENT_USER.to_owned()),
            ("client_password", CLIENT_PASSWORD.to_owned()),
            // Stand-ins until the fakes run: pgwake's configuration does
            // not depend on them.
            ("authority_host", "https://127.0.0.1/".to_owned()),
            ("identity_endpoint", "http://127.0.0.1/msi/token".to_owned()),
            ("identity_header", "unset".to_owned()),
        ]);
        let argv: Vec<String> = plan.argv.iter().map(|a| root.rewrite(a)).collect();
        let mut run = Prepared {
            name,
            plan,
            root,
            material,
            ids,
            argv,
            values,
            config: Config::default(),
            role: String::new(),
        };
        run.config = effective_config(&run.argv, &run.env(&run.values));
        run.role = run
            .config
            .server
            .auth
            .user
            .clone()
            .unwrap_or_else(|| panic!("{name}: no server.auth.user to make a role for"));
        run
    }

    /// The plan's environment, placeholders filled and paths rewritten.
    fn env(&self, values: &HashMap<&str, String>) -> Vec<(String, String)> {
        self.plan
            .env
            .iter()
            .map(|(k, v)| (k.clone(), self.root.rewrite(&fill(v, values))))
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        let env = self.env(&self.values);
        env.into_iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The running process, with what it was started from.
struct Running<'a> {
    // First: killed (with its group) before the rest goes.
    proc: Proc,
    prep: Prepared<'a>,
    platform: Platform,
    cluster: Arc<Cluster>,
    env: Vec<(String, String)>,
    switch_users: bool,
    logs: tempfile::TempDir,
}

impl Running<'_> {
    fn port(&self, p: u16) -> u16 {
        *self.platform.ports.get(&p).unwrap_or_else(|| {
            panic!(
                "{}: port {p} is not one pgwake listens on ({:?})",
                self.prep.name, self.platform.ports
            )
        })
    }

    fn output(&self) -> String {
        fs::read_to_string(self.logs.path().join("pgwake.log")).unwrap_or_default()
    }

    /// Runs `argv` as the plan runs pgwake (exec probes, ExecReload).
    fn exec(&self, what: &str, argv: &[String], limit: Duration) -> Result<String, String> {
        let argv: Vec<String> = argv.iter().map(|a| self.prep.root.rewrite(a)).collect();
        let mut c = as_planned(self.prep.plan, self.prep.ids, &argv);
        c.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        let dir = tempfile::tempdir().unwrap();
        run(what, c, dir.path(), limit).map_err(|e| format!("{e:#}"))
    }

    fn probe(&self, probe: &Probe) -> Result<String, String> {
        probe_once(
            probe,
            |p| self.port(p),
            |argv, limit| self.exec("exec probe", argv, limit),
        )
    }

    /// Waits (bounded) until `cond` holds, failing when pgwake exits first.
    fn wait_until(&mut self, what: &str, limit: Duration, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "{}: pgwake exited ({status}) while waiting for {what}\n{}",
                    self.prep.name,
                    self.proc.output_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: no {what} within {limit:?}\n{}",
            self.prep.name,
            self.proc.output_tail(60)
        );
    }

    /// Started: the startup probe passes within failureThreshold periods
    /// (the kubelet restarts the container after that); attempts follow
    /// each other without the period's wait, which changes no verdict.
    /// Without one, until pgwake listens. Then readiness and liveness pass,
    /// twice each.
    fn pass_probes(&mut self) {
        let name = self.prep.name;
        let started = Instant::now();
        let probes = self.prep.plan.probes.clone();
        let startup: Vec<&Probe> = probes.iter().filter(|p| p.kind == "startupProbe").collect();
        for probe in &startup {
            let limit =
                Duration::from_secs(probe.initial + probe.failure * probe.period + probe.timeout);
            let deadline = Instant::now() + limit;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let e = match self.probe(probe) {
                    Ok(answer) => {
                        eprintln!(
                            "  startup probe passed after {:?} ({attempts} attempts): {answer}",
                            started.elapsed()
                        );
                        break;
                    }
                    Err(e) => e,
                };
                if let Some(status) = self.proc.exited() {
                    panic!(
                        "{name}: pgwake exited ({status}) before its startup probe passed (last: {e})\n{}",
                        self.proc.output_tail(60)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}: the startup probe did not pass within {limit:?} ({attempts} attempts; last: {e})\n{}",
                    self.proc.output_tail(60)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let listen = self.port(self.prep.config.listen.socket_addr().unwrap().port());
        if startup.is_empty() {
            self.wait_until("pgwake listening", EVENT_TIMEOUT, |_| {
                TcpStream::connect(("127.0.0.1", listen)).is_ok()
            });
        }
        if let Some(dir) = self.prep.config.listen.unix_socket_dir.clone() {
            let socket = dir.join(format!(".s.PGSQL.{listen}"));
            self.wait_until(
                &format!("the unix socket {}", socket.display()),
                EVENT_TIMEOUT,
                |_| socket.exists(),
            );
        }
        for probe in probes.iter().filter(|p| p.kind != "startupProbe") {
            for round in 1..=2 {
                if let Err(e) = self.probe(probe) {
                    panic!(
                        "{name}: {} (round {round}) failed: {e}\n{}",
                        probe.kind,
                        self.proc.output_tail(60)
                    );
                }
            }
        }
    }

    /// The clients the manifests document run `select 1` through pgwake, as
    /// their OS user when the plan names one.
    fn check_clients(&self, when: &str) {
        let (name, plan) = (self.prep.name, self.prep.plan);
        assert!(
            !plan.clients.is_empty(),
            "{name}: the manifests document no client to check"
        );
        let psql = self.cluster.bin().path("psql");
        for (p, url) in &plan.clients {
            let mut values = self.platform.values.clone();
            values.insert("port", self.port(*p).to_string());
            let url = self.prep.root.rewrite(&fill(url, &values));
            let mut c = match plan.client_user.as_ref().filter(|_| self.switch_users) {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(&psql);
                    c
                }
                None => Command::new(&psql),
            };
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("PGCONNECT_TIMEOUT", "10")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(["-c", "select 1", "-d"])
                .arg(&url);
            let dir = tempfile::tempdir().unwrap();
            let out = run("psql", c, dir.path(), EVENT_TIMEOUT).unwrap_or_else(|e| {
                panic!(
                    "{name}: a client {when} ({url}) failed: {e:#}\n{}",
                    self.proc.output_tail(60)
                )
            });
            assert_eq!(out.trim(), "1", "{name}: {url}");
            eprintln!("  client {when}: select 1 through {url}");
        }
    }

    /// systemd's ExecReload, as the service's user; the configuration is
    /// reloaded.
    fn reload(&mut self) {
        let pid = self.proc.id().to_string();
        let argv: Vec<String> = self
            .prep
            .plan
            .reload
            .iter()
            .map(|a| a.replace("$MAINPID", &pid))
            .collect();
        if let Err(e) = self.exec("ExecReload", &argv, EVENT_TIMEOUT) {
            panic!("{}: ExecReload: {e}", self.prep.name);
        }
        self.wait_until("\"configuration reloaded\"", EVENT_TIMEOUT, |r| {
            r.output().contains("configuration reloaded")
        });
    }

    /// The preStop hook's sleep, then SIGTERM; the rest of the grace period
    /// is pgwake's to exit 0 in. The sleep is not waited out (pgwake only
    /// goes on serving meanwhile); its time is taken off the budget.
    fn stop(&mut self) {
        let (name, plan) = (self.prep.name, self.prep.plan);
        let budget = Duration::from_secs(plan.grace.saturating_sub(plan.prestop));
        let stopping = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.proc.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        if !self.prep.config.listen.shutdown_delay.is_zero() {
            // It goes on serving for listen.shutdown_delay: the app's last
            // requests still get their database.
            self.wait_until("\"SIGTERM received\"", EVENT_TIMEOUT, |r| {
                r.output().contains("SIGTERM received")
            });
            self.check_clients("during listen.shutdown_delay");
        }
        let status = self
            .proc
            .wait(budget)
            .unwrap_or_else(|e| panic!("{name}: not stopped within {budget:?} of SIGTERM: {e:#}"));
        assert!(
            status.success(),
            "{name}: exited with {status} after SIGTERM\n{}",
            self.proc.output_tail(60)
        );
        eprintln!(
            "  stopped {:?} after SIGTERM (budget {budget:?})",
            stopping.elapsed()
        );
    }
}

/// Starts the plan's process in front of a local server with what the
/// platform provides.
fn start<'a>(name: &'a str, plan: &'a Plan) -> Running<'a> {
    let switch_users = is_root();
    if !switch_users {
        assert!(
            std::env::var_os("CI").is_none(),
            "the kubelet emulation runs each process as its manifest's user, which needs root; CI runs as root"
        );
        eprintln!("note: not root, so {name} runs as the current user");
    }
    let prep = Prepared::new(name, plan, switch_users);
    if let (Some(user), true) = (&plan.client_user, switch_users) {
        // An app's own user, as the config names it (made when missing).
        let (uid, _) = user_ids(&(user.clone(), user.clone()));
        assert!(
            prep.ids.is_none_or(|(service, _)| service != uid),
            "{name}: the client's user {user} is the service's"
        );
    }
    let cluster = Arc::new(
        Cluster::builder()
            .auth(pgwake_testkit::HostAuth::Scram)
            .user(&prep.role, "not-a-token-yet")
            .database("app", &prep.role)
            .tls(&prep.material.pki.cert_pem, &prep.material.pki.key_pem)
            .start()
            .expect("start cluster"),
    );
    let platform = Platform::serve(&prep, &cluster);
    let env = prep.env(&platform.values);

    let mut cmd = as_planned(plan, prep.ids, &prep.argv);
    cmd.env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    eprintln!(
        "{name} ({}): runs {:?} as {}, with the plan's {} variables and these overrides:",
        plan.source,
        prep.argv,
        prep.ids
            .map(|(u, g)| format!("{u}:{g}"))
            .unwrap_or_else(|| "the current user".into()),
        env.len()
    );
    for (k, v, why) in &platform.overrides {
        eprintln!("  {k}={v}  ({why})");
        cmd.env(k, v);
    }
    let logs = tempfile::tempdir().unwrap();
    let proc = Proc::spawn(name, cmd, logs.path().join("pgwake.log")).unwrap();
    Running {
        proc,
        prep,
        platform,
        cluster,
        env,
        switch_users,
        logs,
    }
}

fn run_plan(name: &str) {
    let all = plans();
    let plan = all
        .get(name)
        .unwrap_or_else(|| panic!("kubelet.py made no plan {name}; it made {:?}", all.keys()));
    let began = Instant::now();
    let mut running = start(name, plan);
    running.pass_probes();
    running.check_clients("once started");
    if !plan.reload.is_empty() {
        running.reload();
        running.check_clients("after a reload");
    }
    running.stop();
    eprintln!("  {name}: {:?} in all", began.elapsed());
}
