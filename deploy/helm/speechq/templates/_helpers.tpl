{{/* Names, labels and the pieces every speechq pod shares. */}}

{{- define "speechq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "speechq.fullname" -}}
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

{{- define "speechq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries; pass (dict "ctx" $ "component" "api"). */}}
{{- define "speechq.labels" -}}
helm.sh/chart: {{ include "speechq.chart" .ctx }}
{{ include "speechq.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: speechq
{{- end }}

{{/* The labels a selector matches; (dict "ctx" $ "component" "worker-gpu"). */}}
{{- define "speechq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "speechq.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "speechq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "speechq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "speechq.secretName" -}}
{{- if .Values.secrets.create }}{{ include "speechq.fullname" . }}{{ else }}{{ required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret }}{{ end }}
{{- end }}

{{- define "speechq.valkeyName" -}}
{{- printf "%s-valkey" (include "speechq.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* An image reference; (dict "ctx" $ "image" .Values.image.api). */}}
{{- define "speechq.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Every worker class, model classes then the dialogue workers, each with its defaults filled in: a YAML
object {classes: [...]}, read back with fromYaml. The Deployment, Service and ScaledObject templates all
range over this one list, so no class can have one and miss another.
*/}}
{{- define "speechq.workerClasses" -}}
{{- $classes := list }}
{{- $names := dict }}
{{- $all := .Values.workers.classes }}
{{- if .Values.workers.dialogue.enabled }}
{{- $all = append $all (omit .Values.workers.dialogue "enabled") }}
{{- end }}
{{- range $all }}
{{- $class := deepCopy . }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString $class.name)) }}
{{- fail (printf "workers: class name %q must be a DNS label (lower-case letters, digits, -)" (toString $class.name)) }}
{{- end }}
{{- if hasKey $names $class.name }}
{{- fail (printf "workers: two classes are named %q" $class.name) }}
{{- end }}
{{- $_ := set $names $class.name true }}
{{- if not $class.queues }}
{{- fail (printf "workers: class %q names no queues" $class.name) }}
{{- end }}
{{- range $class.queues }}
{{- if not (has . (list "llm" "stt" "tts" "dialogue")) }}
{{- fail (printf "workers: class %q names queue %q; speechq's queues are llm, stt, tts, dialogue" $class.name .) }}
{{- end }}
{{- end }}
{{- if and (has "dialogue" $class.queues) (gt (len $class.queues) 1) }}
{{- fail (printf "workers: class %q mixes dialogue with model queues; give dialogue a class of its own (speechq would start two processes in one pod)" $class.name) }}
{{- end }}
{{- /* Defaults are filled key by key: sprig's merge and default would take a 0 (minReplicas: 0) for unset. */}}
{{- $drain := int (ternary $class.drainSeconds $.Values.workers.drainSeconds (hasKey $class "drainSeconds")) }}
{{- $margin := int (ternary $class.drainMarginSeconds $.Values.workers.drainMarginSeconds (hasKey $class "drainMarginSeconds")) }}
{{- $_ := set $class "drainSeconds" $drain }}
{{- $_ := set $class "terminationGracePeriodSeconds" (add $drain $margin) }}
{{- $_ := set $class "gpus" (int (ternary $class.gpus 0 (hasKey $class "gpus"))) }}
{{- $_ := set $class "replicas" (int (ternary $class.replicas 1 (hasKey $class "replicas"))) }}
{{- $scaling := deepCopy (default dict $class.autoscaling) }}
{{- range $key, $value := dict "enabled" true "minReplicas" 1 "maxReplicas" 1 "threshold" 1 "activationThreshold" 0 }}
{{- if not (hasKey $scaling $key) }}
{{- $_ := set $scaling $key $value }}
{{- end }}
{{- end }}
{{- if gt (int $scaling.minReplicas) (int $scaling.maxReplicas) }}
{{- fail (printf "workers: class %q has autoscaling.minReplicas above maxReplicas" $class.name) }}
{{- end }}
{{- $_ := set $scaling "keda" (and $.Values.keda.enabled $scaling.enabled) }}
{{- $_ := set $class "autoscaling" $scaling }}
{{- $classes = append $classes $class }}
{{- end }}
{{- toYaml (dict "classes" $classes) }}
{{- end }}

{{/* "true" when KEDA may take some worker class to zero replicas, else "". */}}
{{- define "speechq.scalesToZero" -}}
{{- $zero := false }}
{{- range (include "speechq.workerClasses" . | fromYaml).classes }}
{{- if and .autoscaling.keda (eq (int .autoscaling.minReplicas) 0) }}
{{- $zero = true }}
{{- end }}
{{- end }}
{{- ternary "true" "" $zero }}
{{- end }}

{{/*
REDIS_URL (and CELERY_BROKER_URL) for every speechq container. $(REDIS_PASSWORD) is expanded by the kubelet
from the env var defined before it, so the password lives only in the Secret.
*/}}
{{- define "speechq.redisEnv" -}}
{{- $secret := include "speechq.secretName" . }}
{{- $mode := .Values.redis.mode }}
{{- if or (eq $mode "valkey") (eq $mode "sentinel") }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: REDIS_PASSWORD
      optional: {{ eq $mode "sentinel" }}
{{- end }}
{{- if eq $mode "valkey" }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "speechq.valkeyName" .) | quote }}
{{- else if eq $mode "external" }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: REDIS_URL
{{- else if eq $mode "sentinel" }}
{{- $sentinel := .Values.redis.sentinel }}
{{- if not $sentinel.hosts }}
{{- fail "redis.mode=sentinel needs redis.sentinel.hosts" }}
{{- end }}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (not (empty .Values.secrets.redisPassword)) }}
{{- $urls := list }}
{{- range $sentinel.hosts }}
{{- $urls = append $urls (printf "sentinel://%s%s" $auth .) }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "%s/%v?master_name=%s" (join ";" $urls) $sentinel.db $sentinel.masterName | quote }}
{{- else }}
{{- fail (printf "redis.mode must be valkey, external or sentinel, not %q" $mode) }}
{{- end }}
{{- if .Values.broker.url }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CELERY_BROKER_URL
{{- end }}
{{- end }}

{{/* The shared ConfigMap and the Secret, as environment. */}}
{{- define "speechq.envFrom" -}}
- configMapRef:
    name: {{ include "speechq.fullname" . }}
- secretRef:
    name: {{ include "speechq.secretName" . }}
{{- end }}

{{/* The KEDA query for one class: its queues' jobs, as one API replica reports them. */}}
{{- define "speechq.workQuery" -}}
{{- $ctx := .ctx }}
{{- printf "sum(max by (queue, state) (app_queue_jobs{namespace=%q, job=%q, queue=~%q, state=~%q}))" $ctx.Release.Namespace (printf "%s-api" (include "speechq.fullname" $ctx)) (join "|" .class.queues) (join "|" $ctx.Values.keda.states) }}
{{- end }}
