//! Builds the server credential source that `[server.auth]` describes.

use std::sync::Arc;

use pgwake_config::{AuthMethod, ServerAuth};
use pgwake_credentials::{
    AzureIdentity, AzureSource, CommandSource, CredentialError, CredentialSource, NoPassword,
    PasswordFile, RefreshSettings, RefreshingCache, Secret, StaticPassword, TokenFetcher,
};

/// The source, and the cache to keep refreshing when it is a token source.
pub(crate) struct Credentials {
    pub source: Arc<dyn CredentialSource>,
    pub refresher: Option<Arc<RefreshingCache>>,
}

pub(crate) fn from_config(auth: &ServerAuth) -> Result<Credentials, CredentialError> {
    let fixed = |source: Arc<dyn CredentialSource>| Credentials {
        source,
        refresher: None,
    };
    let fetcher: Box<dyn TokenFetcher> = match auth.effective_method() {
        AuthMethod::Password => {
            return Ok(match &auth.password {
                Some(p) => fixed(Arc::new(StaticPassword(p.clone()))),
                None => fixed(Arc::new(NoPassword)),
            })
        }
        AuthMethod::PasswordFile => {
            return Ok(fixed(Arc::new(PasswordFile::new(
                auth.path.clone().unwrap_or_default(),
            ))))
        }
        AuthMethod::Trust => return Ok(fixed(Arc::new(NoPassword))),
        AuthMethod::Command => {
            Box::new(CommandSource::new(auth.command.clone().unwrap_or_default()))
        }
        m => Box::new(AzureSource::new(
            azure_identity(m, auth),
            auth.scope.clone(),
        )?),
    };
    let cache = RefreshingCache::new(fetcher, refresh_settings(auth));
    Ok(Credentials {
        source: cache.clone(),
        refresher: Some(cache),
    })
}

/// How token caches refresh, from `[server.auth]`.
pub(crate) fn refresh_settings(auth: &ServerAuth) -> RefreshSettings {
    RefreshSettings {
        refresh_margin: auth.refresh_margin,
        fetch_timeout: auth.fetch_timeout,
        refresh_interval: auth.refresh_interval,
    }
}

/// The Entra identity an `azure_*` method names, with its keys from
/// `[server.auth]`; anything else means the managed identity.
pub(crate) fn azure_identity(method: AuthMethod, auth: &ServerAuth) -> AzureIdentity {
    match method {
        AuthMethod::AzureWorkloadIdentity => AzureIdentity::WorkloadIdentity {
            client_id: auth.client_id.clone(),
            tenant_id: auth.tenant_id.clone(),
            token_file: auth.token_file.clone(),
        },
        AuthMethod::AzureCli => AzureIdentity::AzureCli {
            tenant_id: auth.tenant_id.clone(),
        },
        AuthMethod::AzureClientSecret => AzureIdentity::ClientSecret {
            tenant_id: auth.tenant_id.clone().unwrap_or_default(),
            client_id: auth.client_id.clone().unwrap_or_default(),
            secret: auth
                .client_secret
                .clone()
                .unwrap_or_else(|| Secret::new("")),
        },
        _ => AzureIdentity::ManagedIdentity {
            client_id: auth.client_id.clone(),
        },
    }
}
