#![forbid(unsafe_code)]
//! The deployment files in `deploy/`: each passes the validator made for
//! its kind (Kubernetes schemas, yamllint, hadolint, python-hcl2 and
//! checkov, `systemd-analyze`), the manifests agree with each other
//! (`deploy/validate/manifests.py`), every pgwake configuration they embed
//! passes `pgwake check`, and the Grafana dashboard queries only metrics
//! that a running pgwake exports.
//!
//! The Python validators live in `target/deployenv`, made here (or by
//! `.ci/run`) from `deploy/requirements.txt`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::deployenv::{deploy, run, venv_bin, workspace};
use common::{http_get, Pgwake};

/// Each validator run; checkov, the slowest, takes a few seconds.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// Kubernetes versions the manifests are checked against: the oldest they
/// need (native sidecars and the preStop sleep action are on by default from
/// 1.30; AKS supports 1.32 and later) and the newest the schemas know.
const KUBERNETES_VERSIONS: &[&str] = &["1.32.0", "1.37.0"];

/// Runs a validator from the virtualenv on files under deploy/; fails the
/// test with the validator's findings unless it exits 0.
fn validate(tool: &str, args: &[&str]) -> String {
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(venv_bin(tool));
    cmd.args(args)
        .current_dir(workspace())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run(tool, cmd, logs.path(), TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{tool}: {e:#}"))
}

/// Files under `dir` (recursively) whose names end with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn strs(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

#[test]
fn kubernetes_manifests_match_the_kubernetes_schemas() {
    let manifests = files(&deploy().join("kubernetes"), ".yaml");
    // Kinds with no schema in Kubernetes itself: Kustomize's own file, and the
    // Prometheus Operator's ServiceMonitor (manifests.py checks it selects the
    // Service and names its port).
    let without_schema = ["kind Kustomization ", "kind ServiceMonitor "];
    let checked: Vec<&str> = strs(&manifests);
    assert!(checked.len() >= 10, "manifests: {checked:?}");
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--strict", "-k", version];
        args.extend(&checked);
        let out = validate("kubernetes-validate", &args);
        let passed = out.matches(" passed for resource ").count();
        let skipped: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        for line in &skipped {
            assert!(
                without_schema.iter().any(|k| line.contains(k)),
                "Kubernetes {version}: a manifest of a kind the schemas should know: {line}"
            );
        }
        assert_eq!(
            passed + skipped.len(),
            checked.len(),
            "Kubernetes {version}: every manifest checked:\n{out}"
        );
    }

    // The check has teeth: a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("deployment.yaml");
    let text = fs::read_to_string(deploy().join("kubernetes/shared/deployment.yaml")).unwrap();
    fs::write(
        &bad,
        text.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"),
    )
    .unwrap();
    let mut cmd = Command::new(venv_bin("kubernetes-validate"));
    cmd.args(["--strict", "-k", KUBERNETES_VERSIONS[0]])
        .arg(&bad);
    let err = run("kubernetes-validate", cmd, dir.path(), TOOL_TIMEOUT)
        .expect_err("a misspelt field must fail");
    assert!(
        format!("{err:#}").contains("terminationGracePeriod"),
        "{err:#}"
    );
}

#[test]
fn yaml_passes_yamllint() {
    let yaml = files(&deploy(), ".yaml");
    assert!(yaml.len() >= 11, "{yaml:?}");
    let mut args = vec!["--strict", "-f", "parsable", "-c", "deploy/.yamllint"];
    args.extend(strs(&yaml));
    validate("yamllint", &args);
}

#[test]
fn dockerfile_passes_hadolint() {
    // Every finding fails, style ones included.
    validate(
        "hadolint",
        &["--failure-threshold", "style", "deploy/docker/Dockerfile"],
    );
}

#[test]
fn terraform_kubernetes_and_dockerfile_pass_checkov() {
    // Terraform findings are fixed or skipped in the .tf file with a reason;
    // Kubernetes and Dockerfile skips are listed with reasons in
    // deploy/.checkov.yaml.
    let out = validate(
        "checkov",
        &[
            "--config-file",
            "deploy/.checkov.yaml",
            "--directory",
            "deploy",
        ],
    );
    for framework in ["terraform", "kubernetes", "dockerfile"] {
        let section = out
            .split_once(&format!("{framework} scan results:"))
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("checkov scanned no {framework} files:\n{out}"));
        let counts = section.trim_start().lines().next().unwrap_or_default();
        assert!(
            counts.starts_with("Passed checks: ") && counts.contains("Failed checks: 0,"),
            "checkov {framework}:\n{out}"
        );
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    let unit = deploy().join("systemd/pgwake.service");
    // `verify` loads the unit as systemd would, in a root of its own: the
    // units it depends on (copied from this machine), /bin/kill for
    // ExecReload and a stand-in for the binary that ExecStart runs.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "etc/systemd/system",
        "usr/lib/systemd",
        "usr/local/bin",
        "bin",
    ] {
        fs::create_dir_all(r.join(dir)).unwrap();
    }
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("multi-user.target").exists())
        .expect("systemd's units (Debian package systemd)");
    let copied = Command::new("cp")
        .args(["-a", system_units])
        .arg(r.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(copied.success());
    fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    fs::write(r.join("usr/local/bin/pgwake"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        r.join("usr/local/bin/pgwake"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::copy(&unit, r.join("etc/systemd/system/pgwake.service")).unwrap();

    let logs = tempfile::tempdir().unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("pgwake.service");
    let out = run("systemd-analyze verify", verify, logs.path(), TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Unknown keys and bad values are only warnings to systemd: none allowed.
    assert!(out.trim().is_empty(), "systemd-analyze verify:\n{out}");

    // The hardening: systemd's own exposure score (0 = fully confined,
    // 10 = unconfined), at most 2.0 ("OK").
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit);
    let out = run(
        "systemd-analyze security",
        security,
        logs.path(),
        TOOL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.contains("Overall exposure level for pgwake.service:"),
        "{out}"
    );
}

/// `deploy/validate/manifests.py` run into a new directory: the manifests
/// agree with each other (it fails otherwise), and what it wrote.
fn manifests() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(deploy().join("validate/manifests.py"))
        .arg(out.path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run("manifests.py", cmd, logs.path(), TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("the manifests disagree: {e:#}"));
    out
}

/// Files a config names under /etc/pgwake/ (mounted Secrets: the TLS
/// certificate and key, the client user list), made in `dir` with content
/// of their kind; the config's text with the paths pointing there.
fn with_mounted_files(toml: &str, dir: &Path) -> String {
    let pki = common::pki();
    let mut text = toml.to_owned();
    let mut rest = toml;
    while let Some(start) = rest.find("\"/etc/pgwake/") {
        let quoted = &rest[start + 1..];
        let end = quoted.find('"').expect("closing quote");
        let path = &quoted[..end];
        rest = &quoted[end..];
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        let content = if name.ends_with(".crt") {
            pki.cert_pem.clone()
        } else if name.ends_with(".key") {
            pki.key_pem.clone()
        } else {
            // PgBouncer's userlist.txt format.
            "\"app\" \"app-secret\"\n\"pgwake_admin\" \"admin-secret\"\n".to_owned()
        };
        let local = dir.join(name);
        fs::write(&local, content).unwrap();
        text = text.replace(path, local.to_str().unwrap());
    }
    text
}

#[test]
fn every_embedded_config_passes_pgwake_check() {
    let out = manifests();
    let dir = out.path().join("configs");
    let mut names: Vec<String> = files(&dir, ".env")
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    // Every way deploy/ configures pgwake: a missing one means the
    // extraction missed a manifest.
    assert_eq!(
        names,
        [
            "azure-containerapp",
            "docker-image",
            "kubernetes-shared",
            "kubernetes-sidecar",
            "systemd",
            "terraform-output-0",
            "terraform-output-1",
        ],
    );
    let mounted = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for name in &names {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
        cmd.arg("check").env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let toml = dir.join(format!("{name}.toml"));
        if toml.exists() {
            let local = mounted.path().join(format!("{name}.toml"));
            let text = fs::read_to_string(&toml).unwrap();
            fs::write(&local, with_mounted_files(&text, mounted.path())).unwrap();
            cmd.arg("--config").arg(local);
        }
        let env = fs::read_to_string(dir.join(format!("{name}.env"))).unwrap();
        for line in env.lines() {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v);
        }
        let result = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&result.stdout);
        if !result.status.success() || !stdout.contains("configuration is valid") {
            failures.push(format!(
                "{name} ({}):\n{}{stdout}",
                result.status,
                String::from_utf8_lossy(&result.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "pgwake check refused {} of the configs in deploy/:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A Prometheus exposition as metric name -> the label sets of its samples.
fn series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut all: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let sample = line.rsplit_once(' ').map(|(s, _)| s).unwrap_or(line);
        let (name, labels) = match sample.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (sample, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        all.entry(name.to_owned()).or_default().push(labels);
    }
    all
}

/// Labels Prometheus adds to every series when it scrapes a target.
const TARGET_LABELS: &[&str] = &["instance", "job"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_pgwake_exports() {
    let out = manifests();
    let tsv = fs::read_to_string(out.path().join("dashboard.tsv")).unwrap();

    // Every query is valid PromQL: promtool parses them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs: Vec<&str> = tsv
        .lines()
        .filter_map(|l| l.strip_prefix("expr\t"))
        .collect();
    assert!(exprs.len() >= 20, "{tsv}");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: |\n          {expr}\n"
        ));
    }
    let rules_file = out.path().join("rules.yaml");
    fs::write(&rules_file, rules).unwrap();
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "rules"]).arg(&rules_file);
    run("promtool", promtool, out.path(), TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("promtool check rules (Debian package prometheus): {e:#}"));

    // A pgwake whose every metric family has something to say: a token with
    // an expiry (a command prints it, as a token helper would) and a
    // lifecycle provider.
    let cluster = common::cluster();
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\nsslmode = \"disable\"\n\
         [server.auth]\nmethod = \"command\"\nuser = \"app\"\n\
         command = \"printf '{{\\\"token\\\": \\\"app-secret\\\", \\\"expires_in\\\": 3600}}'\"\n\
         [pool]\nsize = 4\nmin_idle = 1\n\
         [lifecycle]\nprovider = \"command\"\n\
         [lifecycle.command]\nstatus = \"echo ready\"\nstart = \"true\"\nstop = \"true\"\n",
        cluster.port()
    );
    let p = Pgwake::start_config(&toml, port, &[]);
    // Traffic, so that the per-pool histograms have samples: simple and
    // extended queries, a transaction block, a named statement.
    let client = p.client().await;
    let stmt = client.prepare("select $1::int").await.unwrap();
    for _ in 0..5 {
        client.simple_query("select 1").await.unwrap();
        client.query(&stmt, &[&1i32]).await.unwrap();
        client
            .batch_execute("begin; select 1; commit")
            .await
            .unwrap();
    }
    let (status, body) = http_get(p.admin_port, "/metrics", Duration::from_secs(10));
    assert_eq!(status, 200, "/metrics: {body}");
    let exported = series(&body);

    let mut missing = BTreeSet::new();
    for line in tsv.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[0] {
            "metric" => {
                let name = fields[1];
                let Some(samples) = exported.get(name) else {
                    missing.insert(format!("{name}: not exported"));
                    continue;
                };
                for matcher in fields[2].split(',').filter(|m| !m.is_empty()) {
                    // LABEL=VALUE, or LABEL=~ / LABEL!~ / LABEL!= (regex or
                    // negative matchers: only the label is checked).
                    let (label, value) = match ["=~", "!~", "!="]
                        .iter()
                        .find_map(|op| matcher.strip_suffix(op))
                    {
                        Some(label) => (label, None),
                        None => {
                            let (l, v) = matcher.split_once('=').unwrap();
                            (l, Some(v))
                        }
                    };
                    if TARGET_LABELS.contains(&label) {
                        continue;
                    }
                    let found = samples
                        .iter()
                        .any(|s| s.get(label).is_some_and(|v| value.is_none_or(|w| v == w)));
                    if !found {
                        missing.insert(format!("{name}: no series with {matcher}"));
                    }
                }
            }
            "labels" => {
                for name in fields[1].split(',') {
                    for label in fields[2].split(',') {
                        if TARGET_LABELS.contains(&label) {
                            continue;
                        }
                        let has = exported
                            .get(name)
                            .is_some_and(|s| s.iter().any(|s| s.contains_key(label)));
                        if !has {
                            missing.insert(format!("{name}: no label {label} to group by"));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what pgwake does not export:\n{}\n\n/metrics:\n{body}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
