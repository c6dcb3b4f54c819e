output "rotator_client_id" {
  description = "Helm value azure.workloadIdentity.clientId."
  value       = azurerm_user_assigned_identity.rotator.client_id
}

output "rotator_tenant_id" {
  description = "Helm value azure.workloadIdentity.tenantId."
  value       = azurerm_user_assigned_identity.rotator.tenant_id
}

output "smtp_app_client_id" {
  description = "spec.application.clientId of the ClientSecretRotation."
  value       = azuread_application_registration.smtp.client_id
}

output "smtp_username" {
  description = "The ACS SMTP username: <resource name>|<client id>|<tenant id>."
  value       = "${data.azurerm_communication_service.acs.name}|${azuread_application_registration.smtp.client_id}|${data.azuread_client_config.current.tenant_id}"
}
