//! Microsoft Entra ID tokens for Azure Database for PostgreSQL, via
//! `azure_identity`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use crate::{CredentialError, Secret, Token, TokenFetcher, TokenFuture};

/// The audience of Azure Database for PostgreSQL in Azure's public cloud.
pub const AZURE_POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Which Entra identity to get tokens for.
#[derive(Debug, Clone)]
pub enum AzureIdentity {
    /// The managed identity of the App Service / Container App / VM: system
    /// assigned, or the user-assigned one with this client ID.
    ManagedIdentity { client_id: Option<String> },
    /// AKS workload identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`, each overridable here).
    WorkloadIdentity {
        client_id: Option<String>,
        tenant_id: Option<String>,
        token_file: Option<std::path::PathBuf>,
    },
    /// The signed-in Azure CLI user (local development).
    AzureCli { tenant_id: Option<String> },
    /// A service principal with a client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
}

/// Fetches tokens for one identity and scope.
pub struct AzureSource {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    name: String,
}

impl std::fmt::Debug for AzureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSource")
            .field("source", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl AzureSource {
    pub fn new(identity: AzureIdentity, scope: Option<String>) -> Result<Self, CredentialError> {
        let scope = scope.unwrap_or_else(|| AZURE_POSTGRES_SCOPE.to_string());
        let name = describe(&identity);
        // pgwake's cache retries with its own backoff, and keeps the old
        // token meanwhile; a retrying fetch would only delay that.
        let client_options = ClientOptions {
            retry: RetryOptions::none(),
            ..Default::default()
        };
        let fail = |e: azure_core::Error| CredentialError {
            source_name: name.clone(),
            reason: one_line(&e.to_string()),
        };
        let credential: Arc<dyn TokenCredential> = match identity {
            AzureIdentity::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.map(UserAssignedId::ClientId),
                    client_options,
                }))
                .map_err(fail)?
            }
            AzureIdentity::WorkloadIdentity {
                client_id,
                tenant_id,
                token_file,
            } => {
                let mut options = WorkloadIdentityCredentialOptions {
                    client_id,
                    tenant_id,
                    token_file_path: token_file,
                    ..Default::default()
                };
                options.credential_options.client_options = client_options;
                WorkloadIdentityCredential::new(Some(options)).map_err(fail)?
            }
            AzureIdentity::AzureCli { tenant_id } => {
                AzureCliCredential::new(Some(AzureCliCredentialOptions {
                    tenant_id,
                    ..Default::default()
                }))
                .map_err(fail)?
            }
            AzureIdentity::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                &tenant_id,
                client_id,
                secret.expose().to_string().into(),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(fail)?,
        };
        Ok(AzureSource {
            credential,
            scope,
            name,
        })
    }

    async fn get(&self) -> Result<Token, String> {
        let t = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| describe_error(&e))?;
        let expires_at = u64::try_from(t.expires_on.unix_timestamp())
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        Ok(Token {
            secret: Secret::new(t.token.secret()),
            expires_at,
        })
    }
}

impl TokenFetcher for AzureSource {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(self.get())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn describe(identity: &AzureIdentity) -> String {
    match identity {
        AzureIdentity::ManagedIdentity { client_id } => {
            let endpoint = match std::env::var("IDENTITY_ENDPOINT") {
                Ok(e) => format!("endpoint {e}"),
                Err(_) => "IMDS endpoint http://169.254.169.254".into(),
            };
            match client_id {
                Some(id) => format!("azure_managed_identity (client_id {id}, {endpoint})"),
                None => format!("azure_managed_identity (system-assigned, {endpoint})"),
            }
        }
        AzureIdentity::WorkloadIdentity { client_id, .. } => match client_id {
            Some(id) => format!("azure_workload_identity (client_id {id})"),
            None => "azure_workload_identity (AZURE_CLIENT_ID)".into(),
        },
        AzureIdentity::AzureCli { .. } => "azure_cli (az account get-access-token)".into(),
        AzureIdentity::ClientSecret {
            tenant_id,
            client_id,
            ..
        } => format!("azure_client_secret (tenant {tenant_id}, client_id {client_id})"),
    }
}

/// The error's text, led by the endpoint's HTTP status when it answered.
fn describe_error(e: &azure_core::Error) -> String {
    let mut status = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(az) = err.downcast_ref::<azure_core::Error>() {
            if let azure_core::error::ErrorKind::HttpResponse { status: s, .. } = az.kind() {
                status = Some(u16::from(*s));
            }
        }
        cur = err.source();
    }
    let text = one_line(&e.to_string());
    match status {
        Some(code) => format!("HTTP {code}: {text}"),
        None => text,
    }
}

/// Azure errors span lines and end in a link; one log line reads better.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_identities_are_named() {
        let e = AzureSource::new(
            AzureIdentity::ClientSecret {
                tenant_id: "not a tenant!".into(),
                client_id: "c".into(),
                secret: Secret::new("s3cr3t"),
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("azure_client_secret"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let ok = AzureSource::new(AzureIdentity::AzureCli { tenant_id: None }, None).unwrap();
        assert_eq!(ok.scope, AZURE_POSTGRES_SCOPE);
        assert!(format!("{ok:?}").contains("azure_cli"));
    }
}
