{{/*
Names, labels, images, security contexts and the pieces every workload shares.
Every helper is prefixed `loomstack.`; helpers that need more than the root context take a
dict with `root` (the chart's root context) and what they document.
*/}}

{{- define "loomstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "loomstack.fullname" -}}
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

{{- define "loomstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's objects: dict root, component (e.g. "gateway", "engine-llama"). */}}
{{- define "loomstack.componentName" -}}
{{- printf "%s-%s" (include "loomstack.fullname" .root | trunc 40 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: dict root, component. */}}
{{- define "loomstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loomstack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of an object: dict root, component. */}}
{{- define "loomstack.labels" -}}
helm.sh/chart: {{ include "loomstack.chart" .root }}
{{ include "loomstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: loomstack
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Image reference: dict root, image. A digest wins over the tag. */}}
{{- define "loomstack.image" -}}
{{- $registry := default .root.Values.global.imageRegistry .image.registry -}}
{{- $repo := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (required (printf "image %s needs a tag or a digest" .image.repository) .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "loomstack.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Pod Security Standard "restricted": the pod half. */}}
{{- define "loomstack.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Pod Security Standard "restricted": the container half (read-only root filesystem). */}}
{{- define "loomstack.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/*
Fails unless terminationGracePeriodSeconds outlasts the preStop sleep plus the server's graceful
stop, so Kubernetes never SIGKILLs a server that is still draining.
dict name, settings (with preStopSleepSeconds, graceSeconds, terminationGracePeriodSeconds).
*/}}
{{- define "loomstack.checkGrace" -}}
{{- $s := .settings -}}
{{- $needed := add (int $s.preStopSleepSeconds) (int (ceil $s.graceSeconds)) -}}
{{- if le (int $s.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + graceSeconds (%d)" .name (int $s.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level shutdown settings and the preStop hook: dict settings. Container half in `loomstack.preStop`. */}}
{{- define "loomstack.preStop" -}}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .preStopSleepSeconds }}
{{- end -}}

{{/*
Native gRPC probes on the grpc.health.v1 service names the kit serves: `startup` (loaded),
`liveness` (the event loop answers), `readiness` (dependencies reachable, not draining).
Kubernetes' gRPC probes speak no TLS, so with `serviceAuth.mtls.enabled` they go to the
plaintext health-only port instead of the gRPC port.
dict root, port, healthPort, startupPeriod, startupFailures.
*/}}
{{- define "loomstack.grpcProbes" -}}
{{- $port := include "loomstack.probePort" . | int -}}
startupProbe:
  grpc:
    port: {{ $port }}
    service: startup
  periodSeconds: {{ int (default 5 .startupPeriod) }}
  failureThreshold: {{ int (default 60 .startupFailures) }}
  timeoutSeconds: 5
livenessProbe:
  grpc:
    port: {{ $port }}
    service: liveness
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  grpc:
    port: {{ $port }}
    service: readiness
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The port health checks reach a gRPC service on: dict root, port, healthPort. */}}
{{- define "loomstack.probePort" -}}
{{- ternary .healthPort .port .root.Values.serviceAuth.mtls.enabled | int -}}
{{- end -}}

{{/* Writable scratch space for a read-only root filesystem: /tmp and $HOME. */}}
{{- define "loomstack.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "loomstack.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/loomstack
{{- end -}}

{{/* The Secret and key holding the PostgreSQL URL (bundled: generated; external: the user's). */}}
{{- define "loomstack.databaseSecretName" -}}
{{- if eq .Values.postgresql.mode "external" -}}
{{- required "postgresql.external.existingSecret is required when postgresql.mode is external" .Values.postgresql.external.existingSecret -}}
{{- else -}}
{{- include "loomstack.componentName" (dict "root" . "component" "postgresql") -}}
{{- end -}}
{{- end -}}

{{- define "loomstack.databaseSecretKey" -}}
{{- ternary .Values.postgresql.external.secretKey "url" (eq .Values.postgresql.mode "external") -}}
{{- end -}}

{{/* One env var carrying the database URL: dict root, name. */}}
{{- define "loomstack.databaseUrlEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "loomstack.databaseSecretName" .root }}
      key: {{ include "loomstack.databaseSecretKey" .root }}
{{- end -}}

{{/* Label that lets a pod through the PostgreSQL NetworkPolicy. */}}
{{- define "loomstack.databaseClientLabel" -}}
loomstack.io/database-client: "true"
{{- end -}}

{{/* Service addresses (host:port) the services reach each other on. */}}
{{- define "loomstack.inferenceAddress" -}}
{{- printf "%s:%d" (include "loomstack.componentName" (dict "root" . "component" "inference-api")) (int .Values.inference.port) -}}
{{- end -}}

{{- define "loomstack.curationAddress" -}}
{{- printf "%s:%d" (include "loomstack.componentName" (dict "root" . "component" "curation")) (int .Values.curation.port) -}}
{{- end -}}

{{- define "loomstack.trainingAddress" -}}
{{- printf "%s:%d" (include "loomstack.componentName" (dict "root" . "component" "training")) (int .Values.training.port) -}}
{{- end -}}

{{- define "loomstack.labelStudioUrl" -}}
{{- if eq .Values.labelStudio.mode "bundled" -}}
{{- printf "http://%s:%d" (include "loomstack.componentName" (dict "root" . "component" "label-studio")) (int .Values.labelStudio.bundled.port) -}}
{{- else -}}
{{- .Values.labelStudio.external.url -}}
{{- end -}}
{{- end -}}

{{/*
Fills the keys a map leaves out from a defaults map, recursing into nested maps; everything
else (lists, scalars, including false and 0) in `values` wins. Returns YAML.
(Sprig's merge would let a default `true` or `1` win over an explicit `false` or `0`.)
dict defaults, values.
*/}}
{{- define "loomstack.withDefaults" -}}
{{- $out := dict -}}
{{- range $key, $default := .defaults -}}
{{- if hasKey $.values $key -}}
{{- $value := get $.values $key -}}
{{- if and (kindIs "map" $default) (kindIs "map" $value) -}}
{{- $_ := set $out $key (include "loomstack.withDefaults" (dict "defaults" $default "values" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- else -}}
{{- $_ := set $out $key $default -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .values -}}
{{- if not (hasKey $out $key) -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Every engine: `inference.models[]` with `inference.engineDefaults` filled in, checked for what
the schema cannot express. Returns YAML `{engines: [...]}`.
*/}}
{{- define "loomstack.engines" -}}
{{- $engines := list -}}
{{- $seen := dict -}}
{{- range $i, $model := .Values.inference.models -}}
{{- $e := include "loomstack.withDefaults" (dict "defaults" $.Values.inference.engineDefaults "values" $model) | fromYaml -}}
{{- if hasKey $seen $e.name -}}
{{- fail (printf "inference.models[%d].name %q is used twice: each model needs its own name" $i $e.name) -}}
{{- end -}}
{{- $_ := set $seen $e.name true -}}
{{- if and $e.source.huggingface $e.source.path -}}
{{- fail (printf "inference.models[%d] (%s): set source.huggingface or source.path, not both" $i $e.name) -}}
{{- end -}}
{{- if gt (int $e.tensorParallelSize) (max 1 (int $e.gpu.count) | int) -}}
{{- fail (printf "inference.models[%d] (%s): tensorParallelSize %d needs at least %d GPUs, gpu.count is %d" $i $e.name (int $e.tensorParallelSize) (int $e.tensorParallelSize) (int $e.gpu.count)) -}}
{{- end -}}
{{- include "loomstack.checkGrace" (dict "name" (printf "inference.models[%d] (%s)" $i $e.name) "settings" $e) -}}
{{- $engines = append $engines $e -}}
{{- end -}}
{{- toYaml (dict "engines" $engines) -}}
{{- end -}}

{{/* vLLM arguments an engine entry implies (LOOMSTACK_INFERENCE_ENGINE_ARGS). */}}
{{- define "loomstack.engineArgs" -}}
{{- $args := list -}}
{{- if gt (int .gpu.count) 0 -}}
{{- $args = append $args (printf "--tensor-parallel-size %d" (int .tensorParallelSize)) -}}
{{- $args = append $args (printf "--gpu-memory-utilization %v" .gpu.memoryUtilization) -}}
{{- end -}}
{{- if .lora.enabled -}}
{{- $args = append $args (printf "--enable-lora --max-loras %d --max-lora-rank %d" (int .lora.maxLoras) (int .lora.maxLoraRank)) -}}
{{- end -}}
{{- with .extraEngineArgs -}}
{{- $args = append $args . -}}
{{- end -}}
{{- join " " $args -}}
{{- end -}}

{{/*
Names of every Deployment this release renders, as a JSON list: the gateway's Role may get and
patch exactly these (`resourceNames`). Keep in step with the templates that create Deployments.
*/}}
{{- define "loomstack.deploymentNames" -}}
{{- $components := list "gateway" "inference-api" -}}
{{- range $e := (include "loomstack.engines" . | fromYaml).engines -}}
{{- $components = append $components (printf "engine-%s" $e.name) -}}
{{- end -}}
{{- if .Values.curation.enabled }}{{ $components = append $components "curation" }}{{ end -}}
{{- if .Values.training.enabled }}{{ $components = append $components "training" }}{{ end -}}
{{- if eq .Values.labelStudio.mode "bundled" }}{{ $components = append $components "label-studio" }}{{ end -}}
{{- $names := list -}}
{{- range $components -}}
{{- $names = append $names (include "loomstack.componentName" (dict "root" $ "component" .)) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Service authentication: every Loomstack service container (gateway, inference api, engines,
curation, training; not the migrations Job, not PostgreSQL or Label Studio) reads the
installation's service secret from a read-only file, and with mTLS its certificate, key and CA.
*/}}
{{- define "loomstack.serviceSecretName" -}}
{{- default (include "loomstack.componentName" (dict "root" . "component" "service-auth")) .Values.serviceAuth.existingSecret -}}
{{- end -}}

{{- define "loomstack.serviceAuthDir" -}}/etc/loomstack/service-auth{{- end -}}
{{- define "loomstack.grpcTlsDir" -}}/etc/loomstack/grpc-tls{{- end -}}

{{/* The certificate Secret of one component: dict root, component. */}}
{{- define "loomstack.grpcTlsSecret" -}}
{{- $m := .root.Values.serviceAuth.mtls -}}
{{- $name := get $m.componentSecrets .component | default $m.existingSecret -}}
{{- required (printf "serviceAuth.mtls.enabled needs serviceAuth.mtls.existingSecret (or componentSecrets.%s): a Secret with tls.crt, tls.key and ca.crt" .component) $name -}}
{{- end -}}

{{/*
Environment of a Loomstack service container: the service secret file and, with mTLS, the TLS
files and (for gRPC servers: `service` e.g. "INFERENCE" and `healthPort`) the health-only port.
dict root, service (optional), healthPort (optional).
*/}}
{{- define "loomstack.serviceAuthEnv" -}}
- name: LOOMSTACK_SERVICE_SECRET_FILE
  value: {{ printf "%s/%s" (include "loomstack.serviceAuthDir" .root) .root.Values.serviceAuth.secretKey | quote }}
{{- if .root.Values.serviceAuth.mtls.enabled }}
- name: LOOMSTACK_GRPC_TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" (include "loomstack.grpcTlsDir" .root) | quote }}
- name: LOOMSTACK_GRPC_TLS_KEY_FILE
  value: {{ printf "%s/tls.key" (include "loomstack.grpcTlsDir" .root) | quote }}
- name: LOOMSTACK_GRPC_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" (include "loomstack.grpcTlsDir" .root) | quote }}
{{- if .service }}
- name: {{ printf "LOOMSTACK_%s_HEALTH_PORT" .service }}
  value: {{ .healthPort | quote }}
{{- end }}
{{- if eq (default "" .service) "INFERENCE" }}
- name: LOOMSTACK_INFERENCE_ENGINE_TLS_SERVER_NAME
  value: {{ include "loomstack.engineTlsServerName" .root | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes behind `loomstack.serviceAuthEnv`: dict root, component. */}}
{{- define "loomstack.serviceAuthVolumes" -}}
{{- $auth := .root.Values.serviceAuth -}}
- name: service-auth
  secret:
    secretName: {{ include "loomstack.serviceSecretName" .root }}
    defaultMode: 0440
    items:
      - key: {{ $auth.secretKey }}
        path: {{ $auth.secretKey }}
{{- if $auth.mtls.enabled }}
{{- $cert := include "loomstack.grpcTlsSecret" . }}
- name: grpc-tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $cert }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      - secret:
          name: {{ default $cert $auth.mtls.caSecret }}
          items:
            - key: {{ ternary $auth.mtls.caKey "ca.crt" (ne $auth.mtls.caSecret "") }}
              path: ca.crt
{{- end }}
{{- end -}}

{{- define "loomstack.serviceAuthMounts" -}}
- name: service-auth
  mountPath: {{ include "loomstack.serviceAuthDir" . }}
  readOnly: true
{{- if .Values.serviceAuth.mtls.enabled }}
- name: grpc-tls
  mountPath: {{ include "loomstack.grpcTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The `health` containerPort of a gRPC server with mTLS: dict root, healthPort. */}}
{{- define "loomstack.healthContainerPort" -}}
{{- if .root.Values.serviceAuth.mtls.enabled }}
- name: health
  containerPort: {{ .healthPort }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* The `health` port of a gRPC server's Service with mTLS: dict root, healthPort. */}}
{{- define "loomstack.healthServicePort" -}}
{{- if .root.Values.serviceAuth.mtls.enabled }}
- name: health
  port: {{ .healthPort }}
  targetPort: health
  protocol: TCP
  appProtocol: grpc
{{- end }}
{{- end -}}

{{/*
The policy scanner's deliberate exceptions on a workload (`make helm-lint` runs checkov over
every scenario and fails on any finding that its object does not explain). Each annotation is
`checkov.io/skip-<CHECK>: "<CHECK>=<reason>"`, and it is there only while the exception applies
(a digest set for every image drops CKV_K8S_43, a CPU limit drops CKV_K8S_11, ...).
dict:
  root
  images      list of dict(value, image): every image of the workload and the value that sets it
  resources   list of the containers' resources maps
  secretEnv   variables the workload takes from Secrets and why ("" = none)
  token       why the pod mounts an API token ("" = it does not)
  cpuWhy      why no CPU limit (optional; a default for servers)
  runOnce     a pod that runs to completion (no liveness/readiness to probe): why
Returns YAML map entries (or nothing).
*/}}
{{- define "loomstack.scanSkips" -}}
{{- $skips := dict -}}
{{- $noCpuLimit := false -}}
{{- range .resources -}}
{{- if not (hasKey (default (dict) .limits) "cpu") }}{{ $noCpuLimit = true }}{{ end -}}
{{- end -}}
{{- if $noCpuLimit -}}
{{- $_ := set $skips "CKV_K8S_11" (default "CPU is requested, not capped: a CFS quota throttles a server while the node's cores sit idle, and requests already reserve its share; memory is limited. Set resources.limits.cpu in the values to cap it" .cpuWhy) -}}
{{- end -}}
{{- if ne .root.Values.global.imagePullPolicy "Always" -}}
{{- $_ := set $skips "CKV_K8S_15" "every image is pinned to a version tag or a digest (the schema refuses latest), so IfNotPresent pulls each version once and running nodes do not depend on the registry. Set global.imagePullPolicy to Always to re-pull on every start" -}}
{{- end -}}
{{- $byTag := list -}}
{{- range .images -}}
{{- if not .image.digest }}{{ $byTag = append $byTag (printf "%s.digest" .value) }}{{ end -}}
{{- end -}}
{{- if $byTag -}}
{{- $_ := set $skips "CKV_K8S_43" (printf "pinned to a version tag (the schema refuses latest and tagless images); pin by digest with %s" (join ", " (uniq $byTag))) -}}
{{- end -}}
{{- with .secretEnv -}}
{{- $_ := set $skips "CKV_K8S_35" . -}}
{{- end -}}
{{- with .token -}}
{{- $_ := set $skips "CKV_K8S_38" . -}}
{{- end -}}
{{- with .runOnce -}}
{{- $_ := set $skips "CKV_K8S_8" . -}}
{{- $_ := set $skips "CKV_K8S_9" . -}}
{{- end -}}
{{- range $check, $why := $skips }}
{{ printf "checkov.io/skip-%s" $check }}: {{ printf "%s=%s" $check $why | quote }}
{{- end -}}
{{- end -}}

{{/* The DNS name every engine certificate carries: chat is forwarded to engines at their pod IPs. */}}
{{- define "loomstack.engineTlsServerName" -}}
{{- default (printf "%s-inference-engine" (include "loomstack.fullname" .)) .Values.serviceAuth.mtls.engineServerName -}}
{{- end -}}

{{/*
Plugins (`plugins`): the environment that enables them in one service, LOOMSTACK_<SERVICE>_PLUGINS
and LOOMSTACK_<SERVICE>_PLUGINS_REQUIRED (comma-separated names; nothing while none is enabled),
and with `env` also `plugins.env` (curation and its migrations step, where the plugins' databases
are; never the gateway). Fails on what the schema cannot express: a required plugin not enabled.
dict root, service ("CURATION" or "GATEWAY"), env (bool).
*/}}
{{- define "loomstack.pluginEnv" -}}
{{- $p := .root.Values.plugins -}}
{{- range $p.required -}}
{{- if not (has . $p.enabled) -}}
{{- fail (printf "plugins.required names %q, which is not in plugins.enabled: a required plugin must also be enabled" .) -}}
{{- end -}}
{{- end -}}
{{- $env := list -}}
{{- with $p.enabled -}}
{{- $env = append $env (dict "name" (printf "LOOMSTACK_%s_PLUGINS" $.service) "value" (join "," .)) -}}
{{- end -}}
{{- with $p.required -}}
{{- $env = append $env (dict "name" (printf "LOOMSTACK_%s_PLUGINS_REQUIRED" $.service) "value" (join "," .)) -}}
{{- end -}}
{{- if .env }}{{ $env = concat $env $p.env }}{{ end -}}
{{- with $env }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Names of the `plugins.env` variables taken from a Secret, as a JSON list (for `loomstack.scanSkips`). */}}
{{- define "loomstack.pluginSecretEnv" -}}
{{- $names := list -}}
{{- range .Values.plugins.env -}}
{{- if and .valueFrom .valueFrom.secretKeyRef }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
