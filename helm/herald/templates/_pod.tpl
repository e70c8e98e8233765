{{/*
The Deployment of one role: dict "root" $ "role" "gateway"|"ingest"|"standalone".
Every role shares the image, config and probes; the cluster roles (gateway, ingest) also the NATS settings. They
differ in subcommand, drain and sizing. standalone is one replica, replaced with strategy Recreate.
*/}}
{{- define "herald.deployment" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $v := index $root.Values $role }}
{{- $ctx := dict "root" $root "role" $role "values" $v }}
{{- $cluster := ne $role "standalone" }}
{{- $auth := $root.Values.natsClient.auth }}
{{- $tls := $root.Values.natsClient.tls }}
{{- $tlsPort := include "herald.tlsPort" $root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "herald.roleName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "herald.roleLabels" $ctx | nindent 4 }}
spec:
  {{- if not $cluster }}
  # Always one: the channel state is in this pod's memory.
  replicas: 1
  {{- else if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "herald.roleSelectorLabels" $ctx | nindent 6 }}
  strategy:
    {{- if $cluster }}
    type: RollingUpdate
    rollingUpdate:
      # Bring the new pod up before an old one starts draining, so drained clients have somewhere to go.
      maxSurge: 1
      maxUnavailable: 0
    {{- else }}
    # Stop the old pod before the new one starts: two standalone pods would be two servers with separate state.
    type: Recreate
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "herald.roleSelectorLabels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "herald.configChecksum" $root }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "herald.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      # SIGTERM -> /readyz 503, stop accepting{{ if ne $role "ingest" }}, close connections with 4200 over the drain window{{ end }}, exit 0.
      terminationGracePeriodSeconds: {{ include "herald.terminationGracePeriod" $ctx }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $role }}
          image: {{ include "herald.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ $role | quote }}]
          env:
            - name: HERALD_CONFIG
              value: /etc/herald/config/config.toml
            - name: HERALD_BIND
              value: {{ include "herald.listenAddress" (dict "root" $root "port" $root.Values.ports.http) | quote }}
            - name: HERALD_METRICS_BIND
              value: {{ include "herald.listenAddress" (dict "root" $root "port" $root.Values.ports.metrics) | quote }}
            {{- if $cluster }}
            - name: HERALD_NATS
              value: {{ include "herald.natsServers" $root | quote }}
            # Unique among live nodes, stable for the pod's life: the pod name.
            - name: HERALD_NODE_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- end }}
            {{- if ne $role "ingest" }}
            - name: HERALD_DRAIN_WINDOW
              value: {{ $v.drainWindow | int64 | quote }}
            {{- end }}
            - name: HERALD_LOG_FORMAT
              value: {{ $root.Values.logFormat | quote }}
            - name: RUST_LOG
              value: {{ $root.Values.logLevel | quote }}
            {{- if eq $root.Values.apps.source "env" }}
            {{- $app := index $root.Values.apps.list 0 }}
            - name: PUSHER_APP_ID
              value: {{ $app.id | toString | quote }}
            - name: PUSHER_APP_KEY
              value: {{ $app.key | toString | quote }}
            - name: PUSHER_APP_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ default (include "herald.secretName" $root) $root.Values.apps.existingSecret }}
                  key: {{ if $root.Values.apps.existingSecret }}{{ default "PUSHER_APP_SECRET" $root.Values.apps.existingSecretKey }}{{ else }}PUSHER_APP_SECRET{{ end }}
            {{- if $app.client_events }}
            # Client events (pusher-js trigger, Echo's whisper) for the app taken from PUSHER_APP_*.
            - name: HERALD_CLIENT_EVENTS
              value: "true"
            {{- end }}
            {{- end }}
            {{- if $cluster }}
            {{- if $auth.existingSecret }}
            {{- range $k := list "user" "password" "token" "nkey_seed" }}
            - name: HERALD_NATS_{{ upper $k }}
              valueFrom:
                secretKeyRef:
                  name: {{ $auth.existingSecret }}
                  key: {{ $k }}
                  optional: true
            {{- end }}
            {{- else if include "herald.natsInlineAuth" $root }}
            {{- range $k, $val := dict "user" $auth.user "password" $auth.password "token" $auth.token "nkey_seed" $auth.nkeySeed }}
            {{- if $val }}
            - name: HERALD_NATS_{{ upper $k }}
              valueFrom:
                secretKeyRef:
                  name: {{ include "herald.secretName" $root }}
                  key: nats-{{ $k }}
            {{- end }}
            {{- end }}
            {{- end }}
            {{- if $auth.credentials.secretName }}
            - name: HERALD_NATS_CREDENTIALS_FILE
              value: /etc/herald/nats-creds/{{ $auth.credentials.key }}
            {{- end }}
            {{- if $tls.enabled }}
            {{- if $tls.caKey }}
            - name: HERALD_NATS_TLS_CA
              value: /etc/herald/nats-tls/{{ $tls.caKey }}
            {{- end }}
            {{- if $tls.certKey }}
            - name: HERALD_NATS_TLS_CERT
              value: /etc/herald/nats-tls/{{ $tls.certKey }}
            - name: HERALD_NATS_TLS_KEY
              value: /etc/herald/nats-tls/{{ $tls.keyKey }}
            {{- end }}
            {{- end }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $root.Values.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            - name: http
              containerPort: {{ $root.Values.ports.http }}
              protocol: TCP
            {{- if $tlsPort }}
            # config.tls_bind: the same routes over TLS (wss://, https://)
            - name: https
              containerPort: {{ $tlsPort }}
              protocol: TCP
            {{- end }}
            - name: metrics
              containerPort: {{ $root.Values.ports.metrics }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          {{- if gt ($v.preStopSleepSeconds | int64) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $v.preStopSleepSeconds | int64 | quote }}]
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/herald/config
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if and $cluster $auth.credentials.secretName }}
            - name: nats-creds
              mountPath: /etc/herald/nats-creds
              readOnly: true
            {{- end }}
            {{- if and $cluster $tls.enabled }}
            - name: nats-tls
              mountPath: /etc/herald/nats-tls
              readOnly: true
            {{- end }}
            {{- with $root.Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          {{- include "herald.configVolume" $root | trim | nindent 10 }}
        - name: tmp
          emptyDir:
            sizeLimit: 16Mi
        {{- if and $cluster $auth.credentials.secretName }}
        - name: nats-creds
          secret:
            secretName: {{ $auth.credentials.secretName }}
            items:
              - key: {{ $auth.credentials.key }}
                path: {{ $auth.credentials.key }}
        {{- end }}
        {{- if and $cluster $tls.enabled }}
        - name: nats-tls
          secret:
            secretName: {{ required "natsClient.tls.secretName is required with natsClient.tls.enabled" $tls.secretName }}
        {{- end }}
        {{- with $root.Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range . }}
        - {{ toYaml (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" (fromYaml (include "herald.roleSelectorLabels" $ctx))))) | nindent 10 | trim }}
        {{- end }}
      {{- end }}
{{- end }}

{{/* "IP:PORT" for HERALD_BIND / HERALD_METRICS_BIND; IPv6 hosts in brackets. */}}
{{- define "herald.listenAddress" -}}
{{- if contains ":" .root.Values.listenHost }}[{{ .root.Values.listenHost }}]:{{ .port }}{{ else }}{{ .root.Values.listenHost }}:{{ .port }}{{ end }}
{{- end }}
