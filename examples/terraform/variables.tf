variable "subscription_id" {
  description = "Subscription of the AKS cluster, the Communication Services resource and the rotator's identity."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group for the rotator's user-assigned managed identity."
  type        = string
}

variable "location" {
  description = "Azure region of the managed identity."
  type        = string
}

variable "aks_name" {
  description = "AKS cluster the rotator runs in (OIDC issuer and workload identity enabled)."
  type        = string
}

variable "aks_resource_group_name" {
  description = "Resource group of the AKS cluster."
  type        = string
}

variable "rotator_namespace" {
  description = "Namespace of the Helm release."
  type        = string
  default     = "entra-rotator"
}

variable "rotator_service_account" {
  description = "ServiceAccount of the Helm release (the chart's default is the release's full name)."
  type        = string
  default     = "entra-rotator"
}

variable "communication_service_name" {
  description = "Azure Communication Services resource whose SMTP relay the application sends through."
  type        = string
}

variable "communication_service_resource_group_name" {
  description = "Resource group of the Communication Services resource."
  type        = string
}

variable "smtp_app_display_name" {
  description = "Display name of the Entra application whose client secret is the SMTP password."
  type        = string
  default     = "dify-smtp"
}
