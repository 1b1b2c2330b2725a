{{/* The labels every object carries, and the selector subset. */}}
{{- define "p2preg.selectorLabels" -}}
app.kubernetes.io/name: p2preg
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "p2preg.labels" -}}
{{ include "p2preg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "p2preg.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "p2preg.keySecret" -}}
{{ .Values.clusterKey.existingSecret | default .Values.clusterKey.secretName }}
{{- end }}

{{/* --upstream flags, sorted by registry (shared by the node and the containerd init). */}}
{{- define "p2preg.upstreamArgs" -}}
{{- range $registry, $url := .Values.upstreams }}
- --upstream={{ $registry }}={{ $url }}
{{- end }}
{{- end }}

{{/* A container securityContext: non-root, read-only root, no privileges. */}}
{{- define "p2preg.restricted" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
