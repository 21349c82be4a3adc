{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "compute-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "compute-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "compute-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "compute-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "compute-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "compute-operator.labels" -}}
helm.sh/chart: {{ include "compute-operator.chart" . }}
{{ include "compute-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: compute-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "compute-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "compute-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "compute-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when leader election is on: asked for, or forced by more than one replica. */}}
{{- define "compute-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{- define "compute-operator.leaseName" -}}
{{- default (include "compute-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Name of the Secret the credentials volume mounts. */}}
{{- define "compute-operator.credentialsSecretName" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else }}
{{- printf "%s-credentials" (include "compute-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* "true" when the chart itself creates the credentials Secret from values. */}}
{{- define "compute-operator.createCredentialsSecret" -}}
{{- with .Values.credentials }}
{{- if or .token .apiKey .apiSecret }}true{{ else }}false{{ end }}
{{- end }}
{{- end }}

{{/* Fails rendering on contradicting or incomplete settings. Renders nothing. */}}
{{- define "compute-operator.validate" -}}
{{- with .Values.credentials }}
{{- if and .existingSecret (or .token .apiKey .apiSecret) }}
{{- fail "credentials: set either existingSecret or token / apiKey+apiSecret, not both" }}
{{- end }}
{{- if and .token (or .apiKey .apiSecret) }}
{{- fail "credentials: set either token or apiKey+apiSecret, not both" }}
{{- end }}
{{- if and (or .apiKey .apiSecret) (not (and .apiKey .apiSecret)) }}
{{- fail "credentials: apiKey and apiSecret must be set together" }}
{{- end }}
{{- end }}
{{- if lt (int .Values.replicas) 0 }}
{{- fail "replicas must not be negative" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces: a namespace is listed twice" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" }}
{{- end }}
{{- end }}

{{/* The namespace-scoped rules the controller needs, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "compute-operator.rules" -}}
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computeinstanceactions"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computeinstanceactions/status"]
  verbs: ["patch", "update"]
# Fleets: manage their child ComputeInstanceActions (above), read them, write their status; schedules create,
# suspend and delete them as their children.
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computefleetactions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computefleetactions/status"]
  verbs: ["patch", "update"]
# Power schedules: read them and write their status.
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computepowerschedules"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computepowerschedules/status"]
  verbs: ["patch", "update"]
# Children carry blockOwnerDeletion, which needs this where OwnerReferencesPermissionEnforcement is on.
- apiGroups: ["compute.threatwinds.com"]
  resources: ["computefleetactions/finalizers", "computepowerschedules/finalizers"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
