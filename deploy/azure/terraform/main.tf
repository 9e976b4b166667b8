# What pgwake needs in Azure to log in to a Flexible Server without a
# password and to start and stop it:
#
#   - a user-assigned managed identity for pgwake (the app's),
#   - for AKS, a federated credential binding it to a service account,
#   - a custom role with exactly read/start/stop on flexible servers,
#     assigned to the identity on the one server,
#   - the server's Microsoft Entra administrator,
#   - a Postgres role for the identity, made by that administrator.
#
# The server itself is not managed here; it needs Microsoft Entra
# authentication enabled (authentication { active_directory_auth_enabled =
# true } on azurerm_postgresql_flexible_server, or
# `az postgres flexible-server update --microsoft-entra-auth Enabled`).

data "azurerm_client_config" "current" {}

data "azurerm_postgresql_flexible_server" "db" {
  name                = var.server_name
  resource_group_name = var.server_resource_group
}

resource "azurerm_user_assigned_identity" "pgwake" {
  name                = var.identity_name
  resource_group_name = var.identity_resource_group
  location            = var.location
  tags                = var.tags
}

# AKS workload identity: tokens of the service account pgwake runs as are
# exchanged for the identity's tokens.
resource "azurerm_federated_identity_credential" "aks" {
  count               = var.aks_workload_identity == null ? 0 : 1
  name                = "${var.identity_name}-aks"
  resource_group_name = var.identity_resource_group
  parent_id           = azurerm_user_assigned_identity.pgwake.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.aks_workload_identity.oidc_issuer_url
  subject             = "system:serviceaccount:${var.aks_workload_identity.namespace}:${var.aks_workload_identity.service_account}"
}

# pgwake's lifecycle provider "azure": it reads the server's state, starts a
# stopped server when a client arrives, and (with idle_stop_after) stops it
# when idle. Nothing else.
resource "azurerm_role_definition" "waker" {
  name        = "pgwake server waker (${var.server_name})"
  scope       = data.azurerm_postgresql_flexible_server.db.id
  description = "Read, start and stop one Azure Database for PostgreSQL flexible server (pgwake lifecycle provider)."

  permissions {
    actions = [
      "Microsoft.DBforPostgreSQL/flexibleServers/read",
      "Microsoft.DBforPostgreSQL/flexibleServers/start/action",
      "Microsoft.DBforPostgreSQL/flexibleServers/stop/action",
    ]
    not_actions = []
  }

  assignable_scopes = [data.azurerm_postgresql_flexible_server.db.id]
}

resource "azurerm_role_assignment" "waker" {
  scope              = data.azurerm_postgresql_flexible_server.db.id
  role_definition_id = azurerm_role_definition.waker.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.pgwake.principal_id
  # A new identity may not have reached every Entra replica yet.
  principal_type = "ServicePrincipal"
}

resource "azurerm_postgresql_flexible_server_active_directory_administrator" "admin" {
  server_name         = data.azurerm_postgresql_flexible_server.db.name
  resource_group_name = var.server_resource_group
  tenant_id           = data.azurerm_client_config.current.tenant_id
  object_id           = var.entra_admin.object_id
  principal_name      = var.entra_admin.principal_name
  principal_type      = var.entra_admin.principal_type
}

# The Postgres role that maps to the identity (pgaadauth_create_principal_with_oid:
# by object ID, so a display name shared with another principal cannot be
# confused with it), plus pg_read_all_stats so that idle stop sees other
# roles' sessions (and other pgwake replicas') before stopping the server.
# Azure offers no resource for this: psql runs it as the Entra administrator,
# with a token from the Azure CLI.
resource "terraform_data" "postgres_role" {
  count            = var.create_postgres_role ? 1 : 0
  triggers_replace = [azurerm_user_assigned_identity.pgwake.principal_id, var.database]

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    environment = {
      PGHOST     = data.azurerm_postgresql_flexible_server.db.fqdn
      PGUSER     = var.entra_admin.principal_name
      PGSSLMODE  = "require"
      PGWAKE_DB  = var.database
      ROLE_NAME  = azurerm_user_assigned_identity.pgwake.name
      ROLE_OID   = azurerm_user_assigned_identity.pgwake.principal_id
      PSQL_FLAGS = "-X -v ON_ERROR_STOP=1"
    }
    command = <<-EOT
      set -euo pipefail
      PGPASSWORD="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)"
      export PGPASSWORD
      psql $PSQL_FLAGS -d postgres -v role="$ROLE_NAME" -v oid="$ROLE_OID" <<'SQL'
      select exists (select 1 from pg_roles where rolname = :'role') as present \gset
      \if :present
      \else
        select * from pgaadauth_create_principal_with_oid(:'role', :'oid', 'service', false, false);
      \endif
      grant pg_read_all_stats to :"role";
      SQL
      psql $PSQL_FLAGS -d "$PGWAKE_DB" -v role="$ROLE_NAME" <<'SQL'
      grant usage, create on schema public to :"role";
      SQL
    EOT
  }

  depends_on = [azurerm_postgresql_flexible_server_active_directory_administrator.admin]
}
