{{/*
Chart name, cut to the 63 characters a label value may hold.
*/}}
{{- define "monolith-ps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name prefix. Cut to 40 characters: the longest suffix the chart adds is
"-sync-agent" and StatefulSet pods add "-<ordinal>" plus a controller hash label
(the pod name must stay a 63-character DNS label).
*/}}
{{- define "monolith-ps.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "monolith-ps.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespace of every namespaced resource.
*/}}
{{- define "monolith-ps.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "monolith-ps.labels" -}}
helm.sh/chart: {{ include "monolith-ps.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "monolith-ps.name" . }}
{{ include "monolith-ps.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the pods of this release.
*/}}
{{- define "monolith-ps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "monolith-ps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component's resources. Call with (dict "ctx" $ "component" "training").
*/}}
{{- define "monolith-ps.componentLabels" -}}
{{ include "monolith-ps.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels that select one component's pods; the sync agent watches pods by these.
Call with (dict "ctx" $ "component" "training").
*/}}
{{- define "monolith-ps.componentSelectorLabels" -}}
{{ include "monolith-ps.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The same selector as a label-selector string: "k=v,k=v".
*/}}
{{- define "monolith-ps.componentSelector" -}}
{{- $labels := include "monolith-ps.componentSelectorLabels" . | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
Container image reference: [registry/]repository:tag[@digest], where registry is
global.imageRegistry (a parent chart's) or else image.registry.
*/}}
{{- define "monolith-ps.image" -}}
{{- $repository := .Values.image.repository }}
{{- $registry := (.Values.global).imageRegistry | default .Values.image.registry }}
{{- if $registry }}
{{- $repository = printf "%s/%s" $registry .Values.image.repository }}
{{- end }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
Name of the agent's ServiceAccount.
*/}}
{{- define "monolith-ps.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-sync-agent" (include "monolith-ps.fullname" .)) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the headless Service of one server role. Call with (dict "ctx" $ "component" "training").
*/}}
{{- define "monolith-ps.serviceName" -}}
{{- printf "%s-%s" (include "monolith-ps.fullname" .ctx) .component }}
{{- end }}

{{/*
Where the config file, TLS files, snapshots and the Numba cache live in the pods.
*/}}
{{- define "monolith-ps.configPath" -}}/etc/monolith-ps/tables.yaml{{- end }}
{{- define "monolith-ps.tlsDir" -}}/etc/monolith-ps/tls{{- end }}
{{- define "monolith-ps.authDir" -}}/etc/monolith-ps/auth{{- end }}

{{/*
The Secret of the callers' bearer tokens: auth.tokenSecret, or the one the chart makes.
*/}}
{{- define "monolith-ps.authSecret" -}}
{{- .Values.auth.tokenSecret | default (printf "%s-auth-tokens" (include "monolith-ps.fullname" .)) -}}
{{- end }}

{{/*
The bearer-token volume with the Secret's keys of the given roles (dict ctx, roles).
*/}}
{{- define "monolith-ps.authVolume" -}}
{{- if .ctx.Values.auth.enabled }}
- name: auth-tokens
  secret:
    secretName: {{ include "monolith-ps.authSecret" .ctx }}
    items:
      {{- range .roles }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end }}

{{/*
Where the bearer-token volume is mounted.
*/}}
{{- define "monolith-ps.authVolumeMount" -}}
{{- if .Values.auth.enabled }}
- name: auth-tokens
  mountPath: {{ include "monolith-ps.authDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
The cluster config of the ConfigMap: .Values.config, with auth.identities and
auth.token_files filled in from .Values.auth when authorization is on.
*/}}
{{- define "monolith-ps.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.auth.enabled }}
{{- $auth := deepCopy ($config.auth | default dict) }}
{{- $ids := merge (deepCopy ($auth.identities | default dict)) (deepCopy (.Values.auth.identities | default dict)) }}
{{- if .Values.auth.agentIdentity }}
{{- $_ := set $ids .Values.auth.agentIdentity "agent" }}
{{- end }}
{{- $files := dict }}
{{- range $role := list "trainer" "reader" "agent" "admin" }}
{{- $_ := set $files $role (printf "%s/%s" (include "monolith-ps.authDir" $) $role) }}
{{- end }}
{{- $_ := set $auth "identities" $ids }}
{{- $_ := set $auth "token_files" $files }}
{{- $_ := set $config "auth" $auth }}
{{- end }}
{{- toYaml $config }}
{{- end }}
{{- define "monolith-ps.snapshotDir" -}}/var/lib/monolith-ps/snapshots{{- end }}
{{- define "monolith-ps.numbaCacheDir" -}}/var/cache/monolith-ps/numba{{- end }}

{{/*
The --snapshot-dir of a training shard of a cluster of numShards: the claim's root, or on
the shared claim shards-<N>/shard-{shard} (the server puts its shard index in {shard}).
Call with (dict "ctx" $ "numShards" N).
*/}}
{{- define "monolith-ps.trainingSnapshotDir" -}}
{{- if .ctx.Values.training.persistence.shared.enabled -}}
{{ include "monolith-ps.snapshotDir" .ctx }}/shards-{{ .numShards }}/shard-{shard}
{{- else -}}
{{ include "monolith-ps.snapshotDir" .ctx }}
{{- end }}
{{- end }}

{{/*
Name of the ReadWriteMany claim shared by the training shards.
*/}}
{{- define "monolith-ps.sharedSnapshotClaim" -}}
{{- .Values.training.persistence.shared.existingClaim | default (printf "%s-training-snapshots" (include "monolith-ps.fullname" .)) }}
{{- end }}

{{/*
Pod annotations shared by every component: the config checksum (a config change rolls
the pods) and, when enabled, the Prometheus scrape annotations.
*/}}
{{- define "monolith-ps.podAnnotations" -}}
checksum/config: {{ toYaml .Values.config | sha256sum }}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Volumes every pod mounts: the config file and writable scratch space.
*/}}
{{- define "monolith-ps.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "monolith-ps.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
- name: numba-cache
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- end }}

{{- define "monolith-ps.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/monolith-ps/tables.yaml
  subPath: tables.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: numba-cache
  mountPath: {{ include "monolith-ps.numbaCacheDir" . }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "monolith-ps.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Environment every container gets.
*/}}
{{- define "monolith-ps.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: NUMBA_CACHE_DIR
  value: {{ include "monolith-ps.numbaCacheDir" . }}
{{- end }}

{{/*
Default pod anti-affinity for one component. Call with (dict "ctx" $ "component" "training" "mode" "soft").
*/}}
{{- define "monolith-ps.antiAffinity" -}}
{{- if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "monolith-ps.componentSelectorLabels" . | nindent 12 }}
{{- else if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "monolith-ps.componentSelectorLabels" . | nindent 10 }}
{{- end }}
{{- end }}

{{/*
The container of a server role. Call with (dict "ctx" $ "component" "training" "role" .Values.training "numShards" N).
*/}}
{{- define "monolith-ps.serverContainer" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
- name: server
  image: {{ include "monolith-ps.image" $ctx }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - server
    - --role={{ .component }}
    - --shard-index=auto
    - --num-shards={{ .numShards }}
    - --config={{ include "monolith-ps.configPath" $ctx }}
    - --host=0.0.0.0
    - --port={{ $v.ports.grpc }}
    - --metrics-port={{ $v.ports.metrics }}
    {{- if eq .component "training" }}
    - --snapshot-dir={{ include "monolith-ps.trainingSnapshotDir" (dict "ctx" $ctx "numShards" .numShards) }}
    {{- end }}
    {{- if $v.tls.enabled }}
    - --tls-cert={{ include "monolith-ps.tlsDir" $ctx }}/tls.crt
    - --tls-key={{ include "monolith-ps.tlsDir" $ctx }}/tls.key
    {{- if $v.tls.clientAuth }}
    - --tls-client-ca={{ include "monolith-ps.tlsDir" $ctx }}/ca.crt
    {{- end }}
    {{- end }}
    - --auth={{ ternary "on" "off" $v.auth.enabled }}
    - --log-format={{ $v.logFormat }}
    {{- with .role.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "monolith-ps.commonEnv" $ctx | nindent 4 }}
    {{- with .role.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: grpc
      containerPort: {{ $v.ports.grpc }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $v.ports.metrics }}
      protocol: TCP
  {{- if $v.tls.enabled }}
  startupProbe:
    httpGet:
      path: /healthz/startup
      port: metrics
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: metrics
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /healthz/live
      port: metrics
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
  {{- else }}
  startupProbe:
    grpc:
      port: {{ $v.ports.grpc }}
      service: monolith_ps.v1.startup
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    grpc:
      port: {{ $v.ports.grpc }}
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
  livenessProbe:
    grpc:
      port: {{ $v.ports.grpc }}
      service: monolith_ps.v1.liveness
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
  {{- end }}
  {{- with .role.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "monolith-ps.commonVolumeMounts" $ctx | nindent 4 }}
    {{- include "monolith-ps.authVolumeMount" $ctx | nindent 4 }}
    {{- if eq .component "training" }}
    - name: snapshots
      mountPath: {{ include "monolith-ps.snapshotDir" $ctx }}
    {{- end }}
    {{- with .role.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
Scheduling fields of a pod spec for one role. Call with (dict "ctx" $ "component" "training" "role" .Values.training).
*/}}
{{- define "monolith-ps.scheduling" -}}
{{- with .role.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .role.affinity }}
affinity:
  {{- toYaml .role.affinity | nindent 2 }}
{{- else if ne (.role.antiAffinity | default "none") "none" }}
affinity:
  {{- include "monolith-ps.antiAffinity" (dict "ctx" .ctx "component" .component "mode" .role.antiAffinity) | trim | nindent 2 }}
{{- end }}
{{- with .role.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Init container that copies the kernels compiled into the image (mps warmup) into the
pod's writable Numba cache volume, which the server container mounts over that path.
*/}}
{{- define "monolith-ps.numbaCacheInit" -}}
- name: numba-cache
  image: {{ include "monolith-ps.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["cp", "-a", "{{ include "monolith-ps.numbaCacheDir" . }}/.", "/numba-cache/"]
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: numba-cache
      mountPath: /numba-cache
{{- end }}
