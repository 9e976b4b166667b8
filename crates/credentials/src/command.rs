//! A token printed by a command (a vault CLI, a cloud CLI, a script).
//!
//! The command runs with `/bin/sh -c`. Its standard output is either the
//! token itself (the first line), or a JSON object with the token under
//! `token` / `access_token` / `accessToken` and its expiry under `expires_on`
//! / `expiresOn` / `expires_at` (Unix seconds, as a number or a string, or an
//! RFC 3339 time) or `expires_in` (seconds from now).

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;

use crate::{Secret, Token, TokenFetcher, TokenFuture};

/// More output than this is not a token.
const MAX_OUTPUT: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct CommandSource {
    command: String,
}

impl CommandSource {
    pub fn new(command: impl Into<String>) -> Self {
        CommandSource {
            command: command.into(),
        }
    }

    async fn run(&self) -> Result<Token, String> {
        let text = run_shell(&self.command).await?;
        parse_output(&text, SystemTime::now())
    }
}

/// Runs `command` with `/bin/sh -c` (no standard input) and returns its
/// standard output. A failure names the exit status and the last line of
/// standard error; output beyond 1 MiB is an error, not a memory hazard.
/// The caller bounds the time (the child is killed when this is dropped).
pub async fn run_shell(command: &str) -> Result<String, String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = child.stdout.take().expect("piped").take(MAX_OUTPUT + 1);
    let mut stderr = child.stderr.take().expect("piped").take(MAX_OUTPUT);
    let (r1, r2, status) = tokio::join!(
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err),
        child.wait(),
    );
    r1.and(r2).map_err(|e| format!("reading its output: {e}"))?;
    let status = status.map_err(|e| format!("waiting for it: {e}"))?;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let last: String = last.chars().take(300).collect();
        return Err(if last.is_empty() {
            format!("the command failed ({status})")
        } else {
            format!("the command failed ({status}): {last}")
        });
    }
    if out.len() as u64 > MAX_OUTPUT {
        return Err("the command printed more than 1 MiB".into());
    }
    String::from_utf8(out).map_err(|_| "the command printed invalid UTF-8".into())
}

impl TokenFetcher for CommandSource {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(self.run())
    }

    /// Names the program only: the rest of a command line may carry a
    /// secret (an argument, `VAR=value`), and this text reaches logs and
    /// clients.
    fn describe(&self) -> String {
        let mut words = self.command.split_whitespace();
        let program = words.by_ref().find(|w| !w.contains('=')).unwrap_or("sh");
        let more = if words.next().is_some() || self.command.contains('=') {
            " …"
        } else {
            ""
        };
        format!("command `{program}{more}`")
    }
}

/// Reads a token from a command's output. Errors never quote the output.
fn parse_output(text: &str, now: SystemTime) -> Result<Token, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the command printed nothing".into());
    }
    if !trimmed.starts_with('{') {
        let line = trimmed.lines().next().unwrap_or("").trim();
        return Ok(Token {
            secret: Secret::new(line),
            expires_at: None,
        });
    }
    let v: serde_json::Value = serde_json::from_str(trimmed)
        .map_err(|e| format!("the command printed JSON that does not parse ({e})"))?;
    let token = ["token", "access_token", "accessToken"]
        .iter()
        .find_map(|k| v.get(k).and_then(|t| t.as_str()))
        .filter(|t| !t.is_empty())
        .ok_or("the command's JSON has no \"token\" (or \"access_token\") string")?;
    let expires_at = if let Some(e) = ["expires_on", "expiresOn", "expires_at"]
        .iter()
        .find_map(|k| v.get(k))
    {
        Some(parse_time(e).ok_or(
            "the command's JSON has an expiry that is neither Unix seconds nor an RFC 3339 time",
        )?)
    } else if let Some(e) = v.get("expires_in") {
        let secs = e
            .as_u64()
            .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
            .ok_or("the command's JSON has an \"expires_in\" that is not a number of seconds")?;
        Some(now + Duration::from_secs(secs))
    } else {
        None
    };
    Ok(Token {
        secret: Secret::new(token),
        expires_at,
    })
}

fn parse_time(v: &serde_json::Value) -> Option<SystemTime> {
    let unix = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(unix),
        serde_json::Value::String(s) => match s.trim().parse::<u64>() {
            Ok(secs) => unix(secs),
            Err(_) => humantime::parse_rfc3339_weak(s.trim()).ok(),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_json_output() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let t = parse_output("abc.def\n", now).unwrap();
        assert_eq!((t.secret.expose(), t.expires_at), ("abc.def", None));
        let t = parse_output(r#"{"token": "tok", "expires_on": 2000}"#, now).unwrap();
        assert_eq!(t.secret.expose(), "tok");
        assert_eq!(t.expires_at, Some(UNIX_EPOCH + Duration::from_secs(2000)));
        let t = parse_output(r#"{"access_token": "tok", "expires_on": "2000"}"#, now).unwrap();
        assert_eq!(t.expires_at, Some(UNIX_EPOCH + Duration::from_secs(2000)));
        let t = parse_output(r#"{"token": "tok", "expires_in": 60}"#, now).unwrap();
        assert_eq!(t.expires_at, Some(now + Duration::from_secs(60)));
        let t = parse_output(
            r#"{"accessToken": "tok", "expiresOn": "1970-01-01T00:33:20Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.expires_at, Some(UNIX_EPOCH + Duration::from_secs(2000)));
    }

    #[test]
    fn bad_output_is_named_without_quoting_it() {
        let now = SystemTime::now();
        for (out, want) in [
            ("", "printed nothing"),
            ("{\"token\": \"s3cr3t\"", "does not parse"),
            ("{\"value\": \"s3cr3t\"}", "no \"token\""),
            (
                "{\"token\": \"s3cr3t\", \"expires_on\": \"soon\"}",
                "expiry",
            ),
            (
                "{\"token\": \"s3cr3t\", \"expires_in\": \"x\"}",
                "expires_in",
            ),
        ] {
            let e = parse_output(out, now).unwrap_err();
            assert!(e.contains(want), "{out}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[tokio::test]
    async fn runs_the_command() {
        let t = CommandSource::new("echo '{\"token\":\"from-cmd\",\"expires_in\":60}'")
            .fetch()
            .await
            .unwrap();
        assert_eq!(t.secret.expose(), "from-cmd");
        assert!(t.expires_at.is_some());
        let e = CommandSource::new("echo oops >&2; exit 3")
            .fetch()
            .await
            .unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("oops"), "{e}");
        let src = CommandSource::new("true");
        assert_eq!(src.describe(), "command `true`");
        let secret = CommandSource::new("TOKEN=hunter2 get-token --password hunter3");
        assert_eq!(secret.describe(), "command `get-token …`");
        assert!(src.fetch().await.unwrap_err().contains("printed nothing"));
    }
}
