# The rotator's own identity and everything it needs, least privilege:
#
# 1. a user-assigned managed identity, federated with the chart's ServiceAccount
#    (Azure workload identity: no secret for the rotator itself);
# 2. the Graph application permission Application.ReadWrite.OwnedBy, granted (an app role
#    assignment is the admin consent), which lets it change only applications it owns;
# 3. ownership of the application whose secret it rotates (here created alongside);
# 4. for that application, the role ACS SMTP authentication requires on the
#    Communication Services resource.

data "azuread_client_config" "current" {}

data "azurerm_kubernetes_cluster" "aks" {
  name                = var.aks_name
  resource_group_name = var.aks_resource_group_name
}

data "azurerm_communication_service" "acs" {
  name                = var.communication_service_name
  resource_group_name = var.communication_service_resource_group_name
}

# 1. The rotator's identity, federated with its ServiceAccount.
resource "azurerm_user_assigned_identity" "rotator" {
  name                = "entra-rotator"
  resource_group_name = var.resource_group_name
  location            = var.location
}

resource "azurerm_federated_identity_credential" "rotator" {
  name                = "entra-rotator-${var.rotator_namespace}"
  resource_group_name = var.resource_group_name
  parent_id           = azurerm_user_assigned_identity.rotator.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = data.azurerm_kubernetes_cluster.aks.oidc_issuer_url
  subject             = "system:serviceaccount:${var.rotator_namespace}:${var.rotator_service_account}"
}

# 2. Application.ReadWrite.OwnedBy on Microsoft Graph, with admin consent.
data "azuread_service_principal" "msgraph" {
  client_id = "00000003-0000-0000-c000-000000000000"
}

resource "azuread_app_role_assignment" "rotator_owned_by" {
  app_role_id         = data.azuread_service_principal.msgraph.app_role_ids["Application.ReadWrite.OwnedBy"]
  principal_object_id = azurerm_user_assigned_identity.rotator.principal_id
  resource_object_id  = data.azuread_service_principal.msgraph.object_id
}

# 3. The application whose secret is the SMTP password, owned by the rotator. No
#    password is created here: the rotator mints the first one and every later one.
resource "azuread_application_registration" "smtp" {
  display_name     = var.smtp_app_display_name
  sign_in_audience = "AzureADMyOrg"
}

resource "azuread_application_owner" "smtp_rotator" {
  application_id  = azuread_application_registration.smtp.id
  owner_object_id = azurerm_user_assigned_identity.rotator.principal_id
}

# Whoever runs Terraform stays an owner too, so people can still manage the application.
resource "azuread_application_owner" "smtp_operator" {
  application_id  = azuread_application_registration.smtp.id
  owner_object_id = data.azuread_client_config.current.object_id
}

resource "azuread_service_principal" "smtp" {
  client_id = azuread_application_registration.smtp.client_id
}

# 4. What ACS SMTP authentication checks for the application: read the Communication
#    Services resource and send through its Email service.
resource "azurerm_role_definition" "acs_smtp_sender" {
  name        = "ACS SMTP sender (${var.communication_service_name})"
  scope       = data.azurerm_communication_service.acs.id
  description = "Send mail through the ACS SMTP relay with an Entra application's client secret."
  permissions {
    actions = [
      "Microsoft.Communication/CommunicationServices/Read",
      "Microsoft.Communication/EmailServices/Write",
    ]
  }
  assignable_scopes = [data.azurerm_communication_service.acs.id]
}

resource "azurerm_role_assignment" "smtp_sender" {
  scope              = data.azurerm_communication_service.acs.id
  role_definition_id = azurerm_role_definition.acs_smtp_sender.role_definition_resource_id
  principal_id       = azuread_service_principal.smtp.object_id
  principal_type     = "ServicePrincipal"
}
