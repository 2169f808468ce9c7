{{- define "tuneloop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "tuneloop.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tuneloop.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tuneloop.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tuneloop.cudaImage" -}}
{{ .Values.image.repository }}:{{ .Values.image.cudaTag | default (printf "%s-cuda" (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end -}}

{{/* Store settings for every tuneloop container: URLs from the Secret, never inlined. */}}
{{- define "tuneloop.storeEnv" -}}
- name: TUNELOOP_STORES__MLFLOW_URI
  valueFrom: {secretKeyRef: {name: {{ .Values.stores.existingSecret }}, key: {{ .Values.stores.mlflowUriKey }}}}
- name: TUNELOOP_STORES__DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ .Values.stores.existingSecret }}, key: {{ .Values.stores.databaseUrlKey }}}}
- name: TUNELOOP_STORES__ARTIFACT_ROOT
  value: {{ .Values.stores.artifactRoot | quote }}
- name: TUNELOOP_STORES__MIGRATE_ON_START
  value: {{ (not .Values.stores.upgradeHook) | quote }}
- name: TUNELOOP_HOME
  value: /var/lib/tuneloop
{{- if .Values.stores.s3.endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ .Values.stores.s3.endpointUrl | quote }}
{{- end }}
{{- if .Values.stores.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .Values.stores.s3.existingSecret }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .Values.stores.s3.existingSecret }}, key: AWS_SECRET_ACCESS_KEY}}
{{- end }}
{{- end -}}

{{- define "tuneloop.podDefaults" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{ toYaml . | nindent 2 }}
{{- end }}
securityContext: {{ toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{ toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "tuneloop.configVolume" -}}
- name: config
  configMap: {name: {{ include "tuneloop.fullname" . }}-config}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "tuneloop.configMounts" -}}
- {name: config, mountPath: /etc/tuneloop, readOnly: true}
- {name: home, mountPath: /var/lib/tuneloop}
{{- end -}}
