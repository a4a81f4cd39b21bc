{{/* Chart name, truncated to 63 characters (a label value). */}}
{{- define "graphpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's resources: release-chart unless the release already contains the chart name. */}}
{{- define "graphpilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "graphpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels the operator pods are selected by. */}}
{{- define "graphpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "graphpilot.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "graphpilot.labels" -}}
{{ include "graphpilot.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: graphpilot
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "graphpilot.chart" . }}
{{- end -}}

{{- define "graphpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "graphpilot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "graphpilot.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Image of InferenceService pods without spec.image. */}}
{{- define "graphpilot.runtimeImage" -}}
{{- default (include "graphpilot.image" .) .Values.runtimeImage -}}
{{- end -}}
