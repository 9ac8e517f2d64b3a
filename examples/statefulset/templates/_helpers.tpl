{{- define "statefulset.name" -}}
{{- printf "%s-db" .Release.Name -}}
{{- end -}}

{{- define "statefulset.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
