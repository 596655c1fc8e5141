{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "syncd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated at 63 characters (DNS label limit); when the
release name already contains the chart name it is used as is.
*/}}
{{- define "syncd.fullname" -}}
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

{{/*
A shorter base name for Jobs and CronJobs: a CronJob name may have 52
characters, and a Job's name becomes a 63-character label value.
*/}}
{{- define "syncd.jobBase" -}}
{{- include "syncd.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "syncd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
*/}}
{{- define "syncd.labels" -}}
helm.sh/chart: {{ include "syncd.chart" . }}
{{ include "syncd.selectorLabels" . }}
app.kubernetes.io/version: {{ include "syncd.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: syncd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by every pod of the release; add
app.kubernetes.io/component to tell serve, migrate and backfill apart.
*/}}
{{- define "syncd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "syncd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "syncd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "syncd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "syncd.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "syncd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "syncd.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "syncd.secretName" -}}
{{- default (include "syncd.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The secrets a command needs, as YAML {refs: [{flag, key, file}]}. Each is mounted
from the Secret at /etc/syncd/secrets/<flag> and passed as --<flag>-file.
Scope: "serve" (everything), "backfill" (API keys and DSN), "migrate" (DSN).
With an existing Secret a provider's keys are used when the provider is enabled;
with a created Secret, when their value is set.
*/}}
{{- define "syncd.secretRefs" -}}
{{- $root := .root }}
{{- $scope := .scope }}
{{- $s := $root.Values.secrets }}
{{- $existing := ne $s.existingSecret "" }}
{{- $all := list
  (dict "flag" "stripe-api-key" "name" "stripeApiKey" "on" $root.Values.stripe.enabled "scopes" (list "serve" "backfill"))
  (dict "flag" "stripe-webhook-secret" "name" "stripeWebhookSecret" "on" $root.Values.stripe.enabled "scopes" (list "serve"))
  (dict "flag" "orb-api-key" "name" "orbApiKey" "on" $root.Values.orb.enabled "scopes" (list "serve" "backfill"))
  (dict "flag" "orb-webhook-secret" "name" "orbWebhookSecret" "on" $root.Values.orb.enabled "scopes" (list "serve"))
  (dict "flag" "clickhouse-dsn" "name" "clickhouseDSN" "on" true "scopes" (list "serve" "backfill" "migrate"))
}}
refs:
{{- range $all }}
{{- $key := index $s.keys .name }}
{{- $use := false }}
{{- if $existing }}
{{- $use = and .on (ne $key "") }}
{{- else }}
{{- $use = and .on (ne (index $s .name) "") }}
{{- $key = default .flag $key }}
{{- end }}
{{- if and $use (has $scope .scopes) }}
  - flag: {{ .flag }}
    key: {{ $key | quote }}
    name: {{ .name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Arguments shared by every syncd command. Takes {root, scope}.
*/}}
{{- define "syncd.commonArgs" -}}
{{- $v := .root.Values }}
{{- $refs := (include "syncd.secretRefs" . | fromYaml).refs | default list }}
{{- $dsnFromSecret := false }}
{{- range $refs }}{{ if eq .flag "clickhouse-dsn" }}{{ $dsnFromSecret = true }}{{ end }}{{ end }}
{{- if and (not $dsnFromSecret) $v.config.clickhouseDSN }}
- --clickhouse-dsn={{ $v.config.clickhouseDSN }}
{{- end }}
{{- range $refs }}
- --{{ .flag }}-file=/etc/syncd/secrets/{{ .flag }}
{{- end }}
- --log-format={{ $v.config.logFormat }}
- --log-level={{ $v.config.logLevel }}
{{- if ne .scope "migrate" }}
{{- if $v.stripe.enabled }}
{{- with $v.stripe.apiURL }}
- --stripe-api-url={{ . }}
{{- end }}
{{- with $v.stripe.accounts }}
- --stripe-accounts={{ . }}
{{- end }}
{{- end }}
{{- if $v.orb.enabled }}
{{- with $v.orb.apiURL }}
- --orb-api-url={{ . }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.rateLimit) }}
- --rate-limit={{ $v.config.rateLimit }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The secret volume of a pod. Takes {root, scope}; renders nothing when the
command needs no secret.
*/}}
{{- define "syncd.secretVolume" -}}
{{- $refs := (include "syncd.secretRefs" . | fromYaml).refs | default list }}
{{- if $refs }}
- name: secrets
  secret:
    secretName: {{ .secretName | default (include "syncd.secretName" .root) }}
    defaultMode: 0440
    items:
    {{- range $refs }}
      - key: {{ .key }}
        path: {{ .flag }}
    {{- end }}
{{- end }}
{{- end }}

{{- define "syncd.secretVolumeMount" -}}
{{- $refs := (include "syncd.secretRefs" . | fromYaml).refs | default list }}
{{- if $refs }}
- name: secrets
  mountPath: /etc/syncd/secrets
  readOnly: true
{{- end }}
{{- end }}

{{/*
Volumes and mounts every pod has: a writable /tmp on a read-only root filesystem.
*/}}
{{- define "syncd.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "syncd.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Env every syncd container gets: non-secret extras only.
*/}}
{{- define "syncd.env" -}}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The pod spec of a batch command (migrate, backfill). Takes {root, scope,
component, args, resources, serviceAccountName, secretName}.
*/}}
{{- define "syncd.batchPodSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
restartPolicy: Never
{{- with .serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "syncd.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
      {{- with (include "syncd.commonArgs" . | trim) }}{{ . | nindent 6 }}{{- end }}
    {{- with (include "syncd.env" $root | trim) }}{{ . | nindent 4 }}{{- end }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    volumeMounts:
      {{- include "syncd.tmpVolumeMount" . | nindent 6 }}
      {{- with (include "syncd.secretVolumeMount" . | trim) }}{{ . | nindent 6 }}{{- end }}
      {{- with $v.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  {{- include "syncd.tmpVolume" . | nindent 2 }}
  {{- with (include "syncd.secretVolume" . | trim) }}{{ . | nindent 2 }}{{- end }}
  {{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
