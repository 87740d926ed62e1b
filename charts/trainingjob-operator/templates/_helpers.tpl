{{- define "tjo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tjo.fullname" -}}
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

{{/* Cluster-scoped objects are shared by every namespace: the release's
namespace in the name keeps two releases of one name apart. */}}
{{- define "tjo.clusterName" -}}
{{- printf "%s-%s" (include "tjo.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "tjo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tjo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Never `app.kubernetes.io/managed-by: trainingjob-operator`: the
operator selects its training pods by that label. */}}
{{- define "tjo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tjo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tjo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tjo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tjo.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The verbs the operator uses on what it manages, and no more. It reads
through watches (get, list, watch). Pods, Services and job status are
written by server-side apply: a PATCH, which needs create as well where
the object does not exist yet. Releasing the report finalizer is a merge
PATCH on the pod. Owner references set blockOwnerDeletion, which needs
update on the owner's finalizers where OwnerReferencesPermissionEnforcement
is on (OpenShift's default). Events go through events.k8s.io: created, then
patched as a series when they repeat. */}}
{{- define "tjo.managedRules" -}}
- apiGroups: [trainingjob.dev]
  resources: [trainingjobs]
  verbs: [get, list, watch]
- apiGroups: [trainingjob.dev]
  resources: [trainingjobs/status]
  verbs: [patch]
- apiGroups: [trainingjob.dev]
  resources: [trainingjobs/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
