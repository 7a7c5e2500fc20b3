{{/* Environment, volumes and mounts both inference roles share. */}}

{{- define "loomstack.inferenceEnv" -}}
- name: HOME
  value: /home/loomstack
- name: LOOMSTACK_INFERENCE_HOME
  value: /var/lib/loomstack
- name: LOOMSTACK_INFERENCE_HOST
  value: {{ .Values.listenHost | quote }}
- name: LOOMSTACK_INFERENCE_PORT
  value: {{ .Values.inference.port | quote }}
- name: LOOMSTACK_INFERENCE_METRICS_PORT
  value: {{ .Values.inference.metricsPort | quote }}
- name: LOOMSTACK_INFERENCE_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: LOOMSTACK_INFERENCE_LOG_JSON
  value: {{ .Values.logging.json | quote }}
{{ include "loomstack.databaseUrlEnv" (dict "root" . "name" "LOOMSTACK_INFERENCE_DATABASE_URL") }}
- name: LOOMSTACK_INFERENCE_BLOB_BACKEND
  value: {{ .Values.inference.blobStore.backend | quote }}
{{- if eq .Values.inference.blobStore.backend "filesystem" }}
- name: LOOMSTACK_INFERENCE_BLOB_DIR
  value: /var/lib/loomstack/blobs
{{- end }}
{{ include "loomstack.serviceAuthEnv" (dict "root" . "service" "INFERENCE" "healthPort" .Values.inference.healthPort) }}
{{- with .Values.inference.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loomstack.inferenceVolumes" -}}
{{ include "loomstack.scratchVolumes" . }}
- name: state
  emptyDir: {}
{{- if eq .Values.inference.blobStore.backend "filesystem" }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ required "inference.blobStore.existingClaim (a ReadWriteMany claim) is required for the filesystem backend" .Values.inference.blobStore.existingClaim }}
{{- end }}
{{- end -}}

{{- define "loomstack.inferenceMounts" -}}
{{ include "loomstack.scratchMounts" . }}
{{ include "loomstack.serviceAuthMounts" . }}
- name: state
  mountPath: /var/lib/loomstack
{{- if eq .Values.inference.blobStore.backend "filesystem" }}
- name: blobs
  mountPath: /var/lib/loomstack/blobs
{{- end }}
{{- end -}}

{{/* Why both inference roles take a Secret as a variable (a checkov CKV_K8S_35 exception). */}}
{{- define "loomstack.inferenceSecretEnvWhy" -}}
LOOMSTACK_INFERENCE_DATABASE_URL comes from a Secret as a variable because the inference service reads its database URL only from the environment (it has no file setting); the service secret and TLS keys are mounted files
{{- end -}}
