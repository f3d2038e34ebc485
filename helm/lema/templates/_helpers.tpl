{{/* Names: <release>-lema unless the release name already contains the chart name (Helm's usual convention). */}}
{{- define "lema.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lema.fullname" -}}
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

{{/* A component's resource name: <fullname>-<component>. Call with (dict "ctx" $ "component" "sampler"). */}}
{{- define "lema.componentName" -}}
{{- printf "%s-%s" (include "lema.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels never change after install (a Deployment's selector is immutable): name, instance, component. */}}
{{- define "lema.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lema.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lema.labels" -}}
{{ include "lema.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lema
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{- define "lema.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lema.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest pins it, else repository:tag, the tag defaulting to the chart's appVersion.
Call with (dict "ctx" $ "image" .Values.image). */}}
{{- define "lema.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The name a service's TLS certificate is verified against. Call with (dict "ctx" $ "component" "checker"). */}}
{{- define "lema.tlsServerName" -}}
{{- default (include "lema.componentName" .) .ctx.Values.tls.serverName -}}
{{- end -}}

{{/* grpc-health-check's TLS arguments (none without TLS). Call with (dict "ctx" $ "component" "checker"). */}}
{{- define "lema.healthCheckTlsArgs" -}}
{{- if .ctx.Values.tls.enabled -}}
{{- list "--ca" (printf "%s/ca.crt" .ctx.Values.tls.mountPath) "--server-name" (include "lema.tlsServerName" .) | toJson -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* Replicas or autoscaler ceilings beyond the topics' partitions would sit idle: refuse them at install. */}}
{{- define "lema.checkPartitions" -}}
{{- range $service, $spec := .Values.services -}}
{{- if $spec.enabled -}}
{{- $most := ternary $spec.autoscaling.maxReplicas $spec.replicas $spec.autoscaling.enabled -}}
{{- if gt (int $most) (int $.Values.topics.partitions) -}}
{{- fail (printf "services.%s may run %d replicas but topics.partitions is %d: raise topics.partitions (a consumer beyond the partitions gets no messages)" $service (int $most) (int $.Values.topics.partitions)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lema.kafkaBootstrapServers" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s-kafka:9092" .Release.Name -}}
{{- else -}}
{{- required "externalKafka.bootstrapServers is required when kafka.enabled=false (host:port of your Kafka brokers)" .Values.externalKafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{- define "lema.minioEndpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio:9000" .Release.Name -}}
{{- else -}}
{{- required "externalMinio.endpoint is required when minio.enabled=false (host:port of your MinIO or S3 endpoint)" .Values.externalMinio.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "lema.vllmBaseUrl" -}}
{{- printf "http://%s:%d/v1" (include "lema.componentName" (dict "ctx" . "component" "vllm")) (int .Values.vllm.port) -}}
{{- end -}}

{{/* The store section every lema config gets: the bundled MinIO or the external endpoint. */}}
{{- define "lema.storeSettings" -}}
kind: minio
endpoint: {{ include "lema.minioEndpoint" . }}
secure: {{ and (not .Values.minio.enabled) .Values.externalMinio.secure }}
{{- end -}}

{{/* The lema service config file: .Values.config with what the chart decides filled in: the bus, the store, where
the server listens (the ports the probes and Services use), token auth when a token Secret is named, the prompt
override directory, and the vLLM server's LLM. */}}
{{- define "lema.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $bus := dict "kind" "kafka" "bootstrap_servers" (include "lema.kafkaBootstrapServers" .) -}}
{{- $_ := set $config "bus" (merge $bus (default dict $config.bus)) -}}
{{- $_ = set $config "store" (merge (include "lema.storeSettings" . | fromYaml) (default dict $config.store)) -}}
{{- $server := dict "grpc_port" .Values.ports.grpc "metrics_port" .Values.ports.metrics -}}
{{- if .Values.tls.enabled -}}
{{- $_ = set $server "tls_cert" (printf "%s/tls.crt" .Values.tls.mountPath) -}}
{{- $_ = set $server "tls_key" (printf "%s/tls.key" .Values.tls.mountPath) -}}
{{- end -}}
{{- $topics := dict "partitions" .Values.topics.partitions "replication_factor" .Values.topics.replicationFactor -}}
{{- $_ = set $config "topics" (merge $topics (default dict $config.topics)) -}}
{{- if .Values.secrets.grpcToken.secretName -}}
{{- $_ = set $server "auth" "token" -}}
{{- $_ = set $server "token_env" "LEMA_GRPC_TOKEN" -}}
{{- end -}}
{{- $_ = set $config "server" (merge $server (default dict $config.server)) -}}
{{- if .Values.prompts.templates -}}
{{- $_ = set $config "run" (merge (dict "prompts_dir" .Values.prompts.mountPath) (default dict $config.run)) -}}
{{- end -}}
{{- if .Values.vllm.enabled -}}
{{- $llms := default dict $config.llms -}}
{{- $vllm := dict "backend" "openai" "model" (default .Values.vllm.model .Values.vllm.servedModelName) "base_url" (include "lema.vllmBaseUrl" .) -}}
{{- $_ = set $llms .Values.vllm.llmName $vllm -}}
{{- $_ = set $config "llms" $llms -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The training config file: .Values.training.config with the store filled in, like the services' config. */}}
{{- define "lema.trainConfig" -}}
{{- $config := deepCopy .Values.training.config -}}
{{- $_ := set $config "store" (merge (include "lema.storeSettings" . | fromYaml) (default dict $config.store)) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Kafka topics a service consumes (lema's fixed wiring); KEDA scales on their lag. */}}
{{- define "lema.inputTopics" -}}
{{- $topics := dict
  "sampler" (list "questions")
  "checker" (list "paths" "corrections")
  "corrector" (list "mistakes")
  "evolver" (list "questions" "corrections.verified")
  "dataset-writer" (list "questions" "cot" "mistakes" "corrections.verified" "drops") -}}
{{- required (printf "services.%s: not a lema service (expected one of %s)" .component (keys $topics | sortAlpha | join ", ")) (get $topics .component) | toJson -}}
{{- end -}}

{{/* Environment from Secrets only: MinIO credentials and LLM API keys. */}}
{{- define "lema.secretEnv" -}}
- name: LEMA_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.s3Credentials.secretName }}
      key: {{ .Values.global.s3Credentials.accessKeyKey }}
- name: LEMA_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.s3Credentials.secretName }}
      key: {{ .Values.global.s3Credentials.secretKeyKey }}
{{- range .Values.secrets.llmApiKeys }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/* The gRPC bearer token, for the services that check it (not the training pods, which serve no gRPC). */}}
{{- define "lema.grpcTokenEnv" -}}
{{- with .Values.secrets.grpcToken }}
{{- if .secretName }}
- name: LEMA_GRPC_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}
