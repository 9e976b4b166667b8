variable "server_name" {
  description = "Name of the existing Azure Database for PostgreSQL Flexible Server that pgwake pools."
  type        = string
}

variable "server_resource_group" {
  description = "Resource group of that server."
  type        = string
}

variable "identity_name" {
  description = "Name of the user-assigned managed identity pgwake runs as; also the Postgres role made for it."
  type        = string
  default     = "pgwake"
}

variable "identity_resource_group" {
  description = "Resource group for the identity (the app's own, usually)."
  type        = string
}

variable "location" {
  description = "Azure region of the identity."
  type        = string
}

variable "entra_admin" {
  description = <<-EOT
    The server's Microsoft Entra administrator: a user or, better, a group of
    the people and pipelines that manage the server. It makes the Postgres
    role for pgwake's identity (local-exec below). Not pgwake's identity:
    pgwake needs no admin rights.
  EOT
  type = object({
    object_id      = string
    principal_name = string
    principal_type = string # "User", "Group" or "ServicePrincipal"
  })
}

variable "create_postgres_role" {
  description = "Make the Postgres role for the identity with psql (needs psql and the Azure CLI, signed in as the Entra administrator, where terraform runs)."
  type        = bool
  default     = true
}

variable "database" {
  description = "Database whose schema public the identity's role may use."
  type        = string
  default     = "app"
}

variable "aks_workload_identity" {
  description = "For AKS workload identity: the cluster's OIDC issuer URL and the service account pgwake runs as. Null: no federated credential (Container Apps, App Service and VMs need none)."
  type = object({
    oidc_issuer_url = string
    namespace       = string
    service_account = string
  })
  default = null
}

variable "tags" {
  description = "Tags for the resources made here."
  type        = map(string)
  default     = {}
}
