{{/* Chart name. */}}
{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects; components append "-<component>". */}}
{{- define "courier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "courier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "courier.labels" -}}
helm.sh/chart: {{ include "courier.chart" . }}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: courier
{{- end -}}

{{/* Labels of a component's objects; call with (dict "root" $ "component" "worker"). */}}
{{- define "courier.componentLabels" -}}
{{ include "courier.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector of a component's pods; call with (dict "root" $ "component" "worker"). */}}
{{- define "courier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "courier.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) -}}
{{- end -}}

{{- define "courier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "courier.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "courier.secretName" -}}
{{- default (include "courier.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The admin gRPC API inside the cluster (COURIER_ADMIN_URL of courierctl). */}}
{{- define "courier.adminUrl" -}}
{{- printf "http://%s-admin:%v" (include "courier.fullname" .) .Values.admin.service.port -}}
{{- end -}}

{{/* The URL the sandbox delivers webhooks to: the ingress Service. */}}
{{- define "courier.webhookUrl" -}}
{{- printf "http://%s-ingress.%s.svc:%v%s" (include "courier.fullname" .) .Release.Namespace .Values.ingress.service.port .Values.ingress.webhookPath -}}
{{- end -}}

{{/* The Bot API base URL of the sender. */}}
{{- define "courier.telegramApiUrl" -}}
{{- if .Values.sender.telegramApiUrl -}}
{{- .Values.sender.telegramApiUrl -}}
{{- else if .Values.sandbox.enabled -}}
{{- printf "http://%s-sandbox.%s.svc:%v" (include "courier.fullname" .) .Release.Namespace .Values.sandbox.service.port -}}
{{- else -}}
https://api.telegram.org
{{- end -}}
{{- end -}}

{{/*
The bot id, for the worker consumer names courier-worker-<bot id>-p<N> (KEDA triggers):
keda.botId, else the number before ':' in secrets.botToken, else the development bot in dev
mode without an existing Secret.
*/}}
{{- define "courier.botId" -}}
{{- $id := "" -}}
{{- if .Values.keda.botId -}}
{{- $id = toString .Values.keda.botId -}}
{{- else if .Values.secrets.botToken -}}
{{- $id = first (splitList ":" .Values.secrets.botToken) -}}
{{- else if and .Values.dev (not .Values.secrets.existingSecret) -}}
{{- $id = "100001" -}}
{{- else -}}
{{- fail "keda.enabled needs keda.botId (the number before ':' in the bot token): the worker consumers KEDA watches are named courier-worker-<bot id>-p<N>" -}}
{{- end -}}
{{- if not (regexMatch "^[1-9][0-9]*$" $id) -}}
{{- fail (printf "keda.botId must be the bot's numeric id, got %q" $id) -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{/*
A secret environment variable; call with (dict "root" $ "env" "COURIER_BOT_TOKEN" "key" "botToken").
Referenced when an existing Secret is used or the value is set; in dev mode a missing value is
left out (the service then uses its development value); otherwise it is referenced anyway, so a
missing secret stops the pod with an error that names the key instead of starting without it.
*/}}
{{- define "courier.secretEnv" -}}
{{- $s := .root.Values.secrets -}}
{{- if or $s.existingSecret (get $s .key) (not .root.Values.dev) }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.secretName" .root }}
      key: {{ get $s.keys .key }}
      {{- if .root.Values.dev }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* Environment shared by every service. */}}
{{- define "courier.commonEnv" -}}
- name: NATS_URL
  value: {{ .Values.nats.url | quote }}
- name: COURIER_PARTITIONS
  value: {{ .Values.partitions | quote }}
- name: COURIER_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if .Values.dev }}
- name: COURIER_DEV
  value: "1"
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A component's extra environment (a name: value map). */}}
{{- define "courier.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Probes on a component's health port; call with (dict "root" $ "port" "http"). */}}
{{- define "courier.probes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "courier.podSpecCommon" -}}
serviceAccountName: {{ include "courier.serviceAccountName" . }}
{{ include "courier.podSpecShared" . }}
{{- end -}}

{{/*
Pod-level settings of the pre-install migration Job. It runs before the chart's own objects
exist, the ServiceAccount among them: it names one only when the chart does not create it.
*/}}
{{- define "courier.podSpecPreInstall" -}}
{{- if not .Values.serviceAccount.create -}}
serviceAccountName: {{ include "courier.serviceAccountName" . }}
{{ end -}}
{{ include "courier.podSpecShared" . }}
{{- end -}}

{{/* Pod-level settings of every pod except the service account. */}}
{{- define "courier.podSpecShared" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod template metadata; call with (dict "root" $ "component" "worker"). */}}
{{- define "courier.podMetadata" -}}
{{- $annotations := dict -}}
{{- if not .root.Values.secrets.existingSecret -}}
{{- $_ := set $annotations "checksum/secret" (include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum) -}}
{{- end -}}
{{- $annotations = merge $annotations (.root.Values.podAnnotations | default dict) -}}
labels:
  {{- include "courier.selectorLabels" . | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A list of TCP NetworkPolicyPorts from a list of port numbers, as YAML. */}}
{{- define "courier.tcpPorts" -}}
{{- $ports := list -}}
{{- range $port := . -}}
{{- $ports = append $ports (dict "port" $port "protocol" "TCP") -}}
{{- end -}}
{{- toYaml $ports -}}
{{- end -}}

{{/* A NetworkPolicy egress rule, as YAML; call with (dict "to" <peers> "ports" <ports>). An empty `to` is left out: any destination on those ports. */}}
{{- define "courier.egressRule" -}}
{{- $rule := dict "ports" .ports -}}
{{- with .to }}{{ $_ := set $rule "to" . }}{{ end -}}
{{- toYaml $rule -}}
{{- end -}}
