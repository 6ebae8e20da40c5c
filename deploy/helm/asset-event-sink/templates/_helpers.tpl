{{/* Names, labels and shared pod pieces of the asset-event-sink chart. */}}

{{- define "asset-event-sink.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "asset-event-sink.fullname" -}}
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

{{- define "asset-event-sink.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "asset-event-sink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asset-event-sink
{{- end -}}

{{/* Selects the worker pods only: migration and partition jobs carry another component. */}}
{{- define "asset-event-sink.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asset-event-sink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{- define "asset-event-sink.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the worker's SINK_DATABASE_URL and SINK_KAFKA_* credentials. */}}
{{- define "asset-event-sink.secretName" -}}
{{- default (include "asset-event-sink.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* librdkafka property name -> SINK_KAFKA_* variable (sasl.password -> SINK_KAFKA_SASL_PASSWORD). */}}
{{- define "asset-event-sink.kafkaEnvName" -}}
{{- printf "SINK_KAFKA_%s" (. | upper | replace "." "_" | replace "-" "_") -}}
{{- end -}}

{{/*
Checks that no schema can express; every manifest that needs them includes this.
Fails rendering with a message saying what to change.
*/}}
{{- define "asset-event-sink.validate" -}}
{{- $grace := .Values.terminationGracePeriodSeconds | float64 -}}
{{- $drain := .Values.config.drainTimeoutS | float64 -}}
{{- if le $grace $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.drainTimeoutS (%v): Kubernetes would kill the worker before it has flushed and committed its batch" .Values.terminationGracePeriodSeconds .Values.config.drainTimeoutS) -}}
{{- end -}}
{{- $partitions := .Values.topicPartitions | int -}}
{{- if gt $partitions 0 -}}
{{- if and (not .Values.keda.enabled) (gt (.Values.replicaCount | int) $partitions) -}}
{{- fail (printf "replicaCount (%v) exceeds topicPartitions (%v): replicas beyond the partition count idle" .Values.replicaCount $partitions) -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (.Values.keda.maxReplicaCount | int) $partitions) -}}
{{- fail (printf "keda.maxReplicaCount (%v) exceeds topicPartitions (%v): replicas beyond the partition count idle" .Values.keda.maxReplicaCount $partitions) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (.Values.keda.minReplicaCount | int) (.Values.keda.maxReplicaCount | int)) -}}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" -}}
{{- end -}}
{{- if and .Values.existingSecret (or .Values.secret.databaseUrl .Values.secret.kafka) -}}
{{- fail "set either existingSecret or secret.databaseUrl/secret.kafka, not both: the chart creates no Secret when existingSecret is set" -}}
{{- end -}}
{{- range $prop, $_ := merge (dict) .Values.config.kafka .Values.secret.kafka -}}
{{- if has $prop (list "group.id" "bootstrap.servers" "enable.auto.commit" "enable.auto.offset.store") -}}
{{- fail (printf "Kafka property %q is managed by the worker; use config.groupId / config.bootstrapServers instead" $prop) -}}
{{- end -}}
{{- end -}}
{{- range $prop, $_ := .Values.config.kafka -}}
{{- if regexMatch "password|secret" $prop -}}
{{- fail (printf "config.kafka.%s looks like a credential: put it under secret.kafka (or existingSecret) so it lands in a Secret, not a ConfigMap" $prop) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings shared by the worker, the migration job and the partition job. */}}
{{- define "asset-event-sink.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The emptyDir behind /tmp: the root filesystem is read-only. */}}
{{- define "asset-event-sink.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end -}}

{{- define "asset-event-sink.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* PromQL label matchers of this release's series. */}}
{{- define "asset-event-sink.promSelector" -}}
{{- if .Values.metrics.prometheusRule.selector -}}
{{- .Values.metrics.prometheusRule.selector -}}
{{- else -}}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "asset-event-sink.fullname" .) -}}
{{- end -}}
{{- end -}}
