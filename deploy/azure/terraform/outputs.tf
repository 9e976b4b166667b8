output "client_id" {
  description = "The identity's client ID: azure.workload.identity/client-id on the Kubernetes service account, or PGWAKE_SERVER_AUTH_CLIENT_ID on Container Apps and VMs."
  value       = azurerm_user_assigned_identity.pgwake.client_id
}

output "principal_id" {
  description = "The identity's object (principal) ID."
  value       = azurerm_user_assigned_identity.pgwake.principal_id
}

output "identity_id" {
  description = "The identity's resource ID, for the Container App's identity block."
  value       = azurerm_user_assigned_identity.pgwake.id
}

output "pgwake_environment" {
  description = "The PGWAKE_* variables that point pgwake at the server with this identity."
  value = {
    PGWAKE_SERVER_HOST           = data.azurerm_postgresql_flexible_server.db.fqdn
    PGWAKE_SERVER_SSLMODE        = "verify-full"
    PGWAKE_SERVER_AUTH_METHOD    = var.aks_workload_identity == null ? "azure_managed_identity" : "azure_workload_identity"
    PGWAKE_SERVER_AUTH_USER      = azurerm_user_assigned_identity.pgwake.name
    PGWAKE_SERVER_AUTH_CLIENT_ID = azurerm_user_assigned_identity.pgwake.client_id
    PGWAKE_LIFECYCLE_PROVIDER    = "azure"
    PGWAKE_LIFECYCLE_RESOURCE_ID = data.azurerm_postgresql_flexible_server.db.id
  }
}
