{{/* Names, labels and the few decisions several templates share. */}}

{{- define "entra-rotator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "entra-rotator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "entra-rotator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "entra-rotator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "entra-rotator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "entra-rotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "entra-rotator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "entra-rotator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "entra-rotator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "entra-rotator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace whose ClientSecretRotations and Secrets the rotator handles. */}}
{{- define "entra-rotator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace }}
{{- end }}

{{- define "entra-rotator.leaseName" -}}
{{- default (printf "%s-leader" (include "entra-rotator.fullname" .)) .Values.controller.leaseName }}
{{- end }}

{{- define "entra-rotator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "entra-rotator.usesWorkloadIdentity" -}}
{{- if eq .Values.azure.credential "workloadIdentity" }}true{{ end }}
{{- end }}

{{/* Fails early, with what to set, on combinations that cannot work. */}}
{{- define "entra-rotator.validate" -}}
{{- if not (has .Values.mode (list "controller" "cronjob")) }}
{{- fail (printf "mode: %q is not a mode; use controller or cronjob" .Values.mode) }}
{{- end }}
{{- if eq .Values.azure.credential "workloadIdentity" }}
{{- $_ := required "azure.workloadIdentity.clientId: set the client ID of the identity federated with this ServiceAccount (see examples/terraform), or choose another azure.credential" .Values.azure.workloadIdentity.clientId }}
{{- else if eq .Values.azure.credential "clientSecret" }}
{{- $_ := required "azure.clientSecret.tenantId: set the tenant of the rotator's app registration" .Values.azure.clientSecret.tenantId }}
{{- $_ := required "azure.clientSecret.clientId: set the client ID of the rotator's app registration" .Values.azure.clientSecret.clientId }}
{{- $_ := required "azure.clientSecret.existingSecret: create a Secret holding the rotator's client secret in the release namespace and name it here" .Values.azure.clientSecret.existingSecret }}
{{- end }}
{{- if and (eq .Values.mode "cronjob") .Values.metrics.serviceMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled: there is no /metrics endpoint in cronjob mode (each pass exits); use mode=controller, or disable the ServiceMonitor" }}
{{- end }}
{{- if and (eq .Values.mode "cronjob") .Values.dashboards.enabled }}
{{- fail "dashboards.enabled: the dashboard shows the controller's /metrics, and cronjob mode has none (each pass exits); use mode=controller, or disable the dashboard (the PrometheusRule alerts on failed passes)" }}
{{- end }}
{{- end }}

{{/* The file passed as --azure-config: how to reach and sign in to Azure. */}}
{{- define "entra-rotator.azureConfig" -}}
azure:
  authorityHost: {{ .Values.azure.authorityHost }}
  graphUrl: {{ .Values.azure.graphUrl }}
  credential:
{{- if eq .Values.azure.credential "workloadIdentity" }}
    # Tenant, client ID and token file come from AZURE_TENANT_ID, AZURE_CLIENT_ID and
    # AZURE_FEDERATED_TOKEN_FILE, injected by the Azure workload identity webhook.
    type: workloadIdentity
{{- else if eq .Values.azure.credential "clientSecret" }}
    type: clientSecret
    tenantId: {{ .Values.azure.clientSecret.tenantId | quote }}
    clientId: {{ .Values.azure.clientSecret.clientId | quote }}
    secretFile: /var/run/secrets/entra-rotator/client-secret
{{- else }}
    type: managedIdentity
{{- with .Values.azure.managedIdentity.clientId }}
    clientId: {{ . | quote }}
{{- end }}
{{- end }}
  keyVault:
    privateHosts: {{ .Values.azure.keyVault.privateHosts | toJson }}
tls:
  extraRootCertificates:
{{- if .Values.tls.extraRootCertificatesConfigMap }}
{{- range .Values.tls.extraRootCertificatesKeys }}
    - /etc/entra-rotator/ca/{{ . }}
{{- end }}
{{- else }} []
{{- end }}
{{- end }}

{{/* The pod spec shared by the Deployment and the CronJob; `args` is the command line. */}}
{{- define "entra-rotator.podSpec" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "entra-rotator.serviceAccountName" $ctx }}
automountServiceAccountToken: true
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
containers:
  - name: entra-rotator
    image: {{ include "entra-rotator.image" $ctx }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
    {{- with .ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    securityContext:
      {{- toYaml $ctx.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml $ctx.Values.resources | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/entra-rotator/config
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if eq $ctx.Values.azure.credential "clientSecret" }}
      - name: client-secret
        mountPath: /var/run/secrets/entra-rotator
        readOnly: true
      {{- end }}
      {{- if $ctx.Values.tls.extraRootCertificatesConfigMap }}
      - name: extra-root-certificates
        mountPath: /etc/entra-rotator/ca
        readOnly: true
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "entra-rotator.fullname" $ctx }}
  - name: tmp
    emptyDir:
      sizeLimit: 16Mi
  {{- if eq $ctx.Values.azure.credential "clientSecret" }}
  - name: client-secret
    secret:
      secretName: {{ $ctx.Values.azure.clientSecret.existingSecret }}
      defaultMode: 256  # 0400: readable by the owner only
      items:
        - key: {{ $ctx.Values.azure.clientSecret.existingSecretKey }}
          path: client-secret
  {{- end }}
  {{- if $ctx.Values.tls.extraRootCertificatesConfigMap }}
  - name: extra-root-certificates
    configMap:
      name: {{ $ctx.Values.tls.extraRootCertificatesConfigMap }}
  {{- end }}
{{- with $ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod labels: selector labels, the workload identity opt-in, and the user's. */}}
{{- define "entra-rotator.podLabels" -}}
{{ include "entra-rotator.labels" . }}
{{- if include "entra-rotator.usesWorkloadIdentity" . }}
azure.workload.identity/use: "true"
{{- end }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Global flags first, then the subcommand's. */}}
{{- define "entra-rotator.globalArgs" -}}
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- end }}
