{{/* Names ------------------------------------------------------------------------------------------------ */}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.fullname" -}}
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

{{/* "<fullname>-<role>", e.g. release-herald-gateway; the role's public Service and its Deployment.
     At most 63 characters (the fullname is cut to 54, or less for "standalone"). */}}
{{- define "herald.roleName" -}}
{{- printf "%s-%s" (include "herald.fullname" .root | trunc (min 54 (sub 62 (len .role)) | int) | trimSuffix "-") .role }}
{{- end }}

{{/* "<fullname>-<role>-admin": the role's admin Service (ports.metrics only). */}}
{{- define "herald.adminServiceName" -}}
{{- printf "%s-%s-admin" (include "herald.fullname" .root | trunc (sub 56 (len .role) | int) | trimSuffix "-") .role }}
{{- end }}

{{/* The roles this mode deploys, as a JSON list: ["gateway","ingest"] or ["standalone"]. */}}
{{- define "herald.roles" -}}
{{- if eq .Values.mode "standalone" }}["standalone"]{{ else }}["gateway","ingest"]{{ end }}
{{- end }}

{{/* The role that serves WebSockets at /app and the one that serves the HTTP API at /apps. */}}
{{- define "herald.websocketRole" -}}
{{- ternary "standalone" "gateway" (eq .Values.mode "standalone") }}
{{- end }}
{{- define "herald.apiRole" -}}
{{- ternary "standalone" "ingest" (eq .Values.mode "standalone") }}
{{- end }}

{{/* The container port of config.tls_bind ("IP:PORT" or "[IPv6]:PORT"), or "" without it. */}}
{{- define "herald.tlsPort" -}}
{{- with .Values.config.tls_bind }}{{ regexFind "[0-9]+$" . }}{{ end }}
{{- end }}

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{/* Labels of one role: dict "root" $ "role" "gateway" */}}
{{- define "herald.roleSelectorLabels" -}}
{{ include "herald.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "herald.roleLabels" -}}
{{ include "herald.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* The chart's Secret (app secret, config.toml with source=config, inline NATS credentials). */}}
{{- define "herald.secretName" -}}
{{- include "herald.fullname" . }}
{{- end }}

{{/* Configuration ----------------------------------------------------------------------------------------- */}}

{{/* Is config.toml stored in a Secret (source=config) rather than a ConfigMap? */}}
{{- define "herald.configInSecret" -}}
{{- if eq .Values.apps.source "config" }}true{{ end }}
{{- end }}

{{/* The volume source of config.toml. */}}
{{- define "herald.configVolume" -}}
{{- if eq .Values.apps.source "config" }}
secret:
  secretName: {{ default (include "herald.secretName" .) .Values.apps.existingSecret }}
  items:
    - key: {{ if .Values.apps.existingSecret }}{{ default "config.toml" .Values.apps.existingSecretKey }}{{ else }}config.toml{{ end }}
      path: config.toml
{{- else }}
configMap:
  name: {{ include "herald.fullname" . }}
  items:
    - key: config.toml
      path: config.toml
{{- end }}
{{- end }}

{{/* A TOML value: strings, numbers, booleans, lists (arrays) and maps (inline tables), nested as deep as needed,
     e.g. a list of maps -> [{ events = ["member_added"], url = "https://..." }]. JSON string escapes are valid TOML
     basic-string escapes. TOML has no null: null entries of a map are left out. */}}
{{- define "herald.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ int64 . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "herald.tomlValue" $v }}{{ end }}]
{{- else if kindIs "map" . }}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{- $pairs = append $pairs (printf "%s = %s" (include "herald.tomlKey" $k) (include "herald.tomlValue" $v)) }}
{{- end }}
{{- end }}
{{- if $pairs }}{ {{ join ", " $pairs }} }{{ else }}{}{{ end }}
{{- else }}{{ toJson . }}
{{- end }}
{{- end }}

{{/* A TOML key: bare when it can be, else a quoted (basic string) key. */}}
{{- define "herald.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* KV bucket replicas: the value, or 3 with the NATS dependency clustered, else 1. */}}
{{- define "herald.kvReplicas" -}}
{{- if not (kindIs "invalid" .Values.natsClient.kvReplicas) }}
{{- .Values.natsClient.kvReplicas | int64 }}
{{- else if and .Values.nats.enabled (dig "config" "cluster" "enabled" false .Values.nats) }}
{{- min 3 (dig "config" "cluster" "replicas" 3 .Values.nats | int64) }}
{{- else }}1{{ end }}
{{- end }}

{{/* config.toml. With withApps, the [[apps]] tables (secrets included) are appended. */}}
{{- define "herald.configToml" -}}
{{- $root := .root -}}
# Rendered by the Herald Helm chart. bind, metrics_bind, the NATS servers, the node id and the drain window come
# from HERALD_* variables (see the Deployments).
{{- range $k, $v := $root.Values.config }}
{{ $k }} = {{ include "herald.tomlValue" $v }}
{{- end }}

{{- if ne $root.Values.mode "standalone" }}

[nats]
subject_prefix = {{ $root.Values.natsClient.subjectPrefix | toJson }}
state_bucket = {{ $root.Values.natsClient.stateBucket | toJson }}
cache_bucket = {{ $root.Values.natsClient.cacheBucket | toJson }}
kv_replicas = {{ include "herald.kvReplicas" $root }}
node_ttl = {{ $root.Values.natsClient.nodeTtl | int64 }}
webhook_stream = {{ $root.Values.natsClient.webhookStream | toJson }}
webhook_dead_letter_stream = {{ $root.Values.natsClient.webhookDeadLetterStream | toJson }}
webhook_ack_wait_secs = {{ $root.Values.natsClient.webhookAckWaitSecs | int64 }}
tls_required = {{ and $root.Values.natsClient.tls.enabled $root.Values.natsClient.tls.required | ternary "true" "false" }}
{{- end }}
{{- if .withApps }}
{{- range $i, $app := $root.Values.apps.list }}

[[apps]]
{{- if not $app.secret }}
{{- fail (printf "apps.list[%d].secret is empty: with apps.source=config every app needs its secret (or put the whole config.toml in apps.existingSecret)" $i) }}
{{- end }}
{{- range $k, $v := $app }}
{{ $k }} = {{ if has $k (list "id" "key" "secret") }}{{ $v | toString | toJson }}{{ else }}{{ include "herald.tomlValue" $v }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* NATS ---------------------------------------------------------------------------------------------------- */}}

{{/* Service name of the NATS dependency (the nats chart's fullname). */}}
{{- define "herald.natsDependencyHost" -}}
{{- $sub := .Values.nats }}
{{- if $sub.fullnameOverride }}
{{- $sub.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $sub.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* HERALD_NATS: comma-separated server URLs. */}}
{{- define "herald.natsServers" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s://%s:4222" (ternary "tls" "nats" .Values.natsClient.tls.enabled) (include "herald.natsDependencyHost" .) }}
{{- else }}
{{- if not .Values.natsClient.servers }}
{{- fail "natsClient.servers is empty: give the NATS server URLs, or set nats.enabled=true for the NATS dependency" }}
{{- end }}
{{- join "," .Values.natsClient.servers }}
{{- end }}
{{- end }}

{{- define "herald.natsInlineAuth" -}}
{{- $a := .Values.natsClient.auth }}
{{- if and (not $a.existingSecret) (or $a.user $a.password $a.token $a.nkeySeed) }}true{{ end }}
{{- end }}

{{/* Shutdown timing ------------------------------------------------------------------------------------------ */}}

{{/* Seconds a gateway or standalone pod needs after Kubernetes starts terminating it: preStop + drain +
     shutdown_timeout. dict "root" $ "role" "gateway"|"standalone" */}}
{{- define "herald.drainingShutdownSeconds" -}}
{{- $v := index .root.Values .role }}
{{- add ($v.preStopSleepSeconds | int64) ($v.drainWindow | int64) (.root.Values.config.shutdown_timeout | default 5 | int64) }}
{{- end }}

{{- define "herald.terminationGracePeriod" -}}
{{- $root := .root }}
{{- $needed := 0 }}
{{- $drains := has .role (list "gateway" "standalone") }}
{{- if $drains }}
{{- $needed = include "herald.drainingShutdownSeconds" (dict "root" $root "role" .role) | int64 }}
{{- else }}
{{- $needed = $root.Values.ingest.preStopSleepSeconds | int64 }}
{{- end }}
{{- $set := .values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- add $needed 15 }}
{{- else if le ($set | int64) $needed }}
{{- $parts := ternary (printf "%s.preStopSleepSeconds + %s.drainWindow + config.shutdown_timeout" .role .role) "ingest.preStopSleepSeconds" $drains }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be larger than %d s (%s): Kubernetes would kill the pod before it has drained" .role ($set | int64) $needed $parts) }}
{{- else }}
{{- $set | int64 }}
{{- end }}
{{- end }}

{{/* Checksum of everything the pods read at start, so a change rolls them. */}}
{{- define "herald.configChecksum" -}}
{{- list .Values.config .Values.apps .Values.natsClient .Values.nats.enabled .Values.mode | toJson | sha256sum }}
{{- end }}

{{/* Checks of values the schema cannot express, for every mode; included once by the Deployments' template. */}}
{{- define "herald.checks" -}}
{{- if and (eq .Values.mode "standalone") .Values.nats.enabled }}
{{- fail "nats.enabled=true with mode=standalone: `herald standalone` uses no NATS; set nats.enabled=false (or mode=cluster)" }}
{{- end }}
{{- range $i, $vol := .Values.extraVolumes }}
{{- if has $vol.name (list "config" "tmp" "nats-creds" "nats-tls") }}
{{- fail (printf "extraVolumes[%d].name %q is a volume of the chart's own; choose another name" $i $vol.name) }}
{{- end }}
{{- end }}
{{- range $i, $m := .Values.extraVolumeMounts }}
{{- if has (trimSuffix "/" $m.mountPath) (list "/etc/herald/config" "/tmp") }}
{{- fail (printf "extraVolumeMounts[%d].mountPath %s is where the chart mounts its own volume; choose another path" $i $m.mountPath) }}
{{- end }}
{{- end }}
{{- with include "herald.tlsPort" . }}
{{- if has (. | int) (list ($.Values.ports.http | int) ($.Values.ports.metrics | int)) }}
{{- fail (printf "config.tls_bind uses port %s, which is ports.http or ports.metrics; give the TLS listener a port of its own" .) }}
{{- end }}
{{- end }}
{{- end }}
