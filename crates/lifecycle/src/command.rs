//! A server started, stopped and asked about with shell commands: a cloud
//! CLI, `pg_ctl`, `systemctl`.

use std::time::Duration;

use pgwake_credentials::run_shell;

use crate::{BoxFuture, Provider, ProviderError, ServerState};

/// A command that runs longer than this has failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct CommandProvider {
    /// Prints the state: ready, stopped, starting or stopping.
    pub status: String,
    pub start: String,
    /// Unset: pgwake never stops the server.
    pub stop: Option<String>,
}

impl CommandProvider {
    async fn run(&self, what: &str, command: &str) -> Result<String, ProviderError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, run_shell(command)).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(ProviderError(format!(
                "lifecycle.command.{what} `{command}`: {e}"
            ))),
            Err(_) => Err(ProviderError(format!(
                "lifecycle.command.{what} `{command}`: no result within {}s",
                COMMAND_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl Provider for CommandProvider {
    fn state(&self) -> BoxFuture<'_, Result<ServerState, ProviderError>> {
        Box::pin(async move {
            let out = self.run("status", &self.status).await?;
            let word = out.split_whitespace().next().unwrap_or("");
            if word.is_empty() {
                return Err(ProviderError(format!(
                    "lifecycle.command.status `{}` printed nothing (expected ready, stopped, starting or stopping)",
                    self.status
                )));
            }
            Ok(ServerState::parse(word))
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move { self.run("start", &self.start).await.map(|_| ()) })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            match &self.stop {
                Some(cmd) => self.run("stop", cmd).await.map(|_| ()),
                None => Err(ProviderError("lifecycle.command.stop is not set".into())),
            }
        })
    }

    fn describe(&self) -> String {
        "command".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_status_and_names_failures() {
        let p = CommandProvider {
            status: "echo Stopped".into(),
            start: "echo starting >&2; exit 1".into(),
            stop: None,
        };
        assert_eq!(p.state().await.unwrap(), ServerState::Stopped);
        let e = p.start().await.unwrap_err().to_string();
        assert!(
            e.contains("lifecycle.command.start") && e.contains("starting"),
            "{e}"
        );
        assert!(p
            .stop()
            .await
            .unwrap_err()
            .to_string()
            .contains("stop is not set"));
        let quiet = CommandProvider {
            status: "true".into(),
            ..p
        };
        assert!(quiet
            .state()
            .await
            .unwrap_err()
            .to_string()
            .contains("printed nothing"));
    }
}
