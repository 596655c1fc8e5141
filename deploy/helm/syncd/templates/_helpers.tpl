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
Scope: "serve" (everything), "backfill" (API keys and DSN), "migrate" (DSN);
with a provider ("stripe" or "orb", for a backfill), only that provider's keys.
With an existing Secret a provider's keys are used when the provider is enabled;
with a created Secret, when their value is set.
*/}}
{{- define "syncd.secretRefs" -}}
{{- $root := .root }}
{{- $scope := .scope }}
{{- $provider := .provider | default "" }}
{{- $s := $root.Values.secrets }}
{{- $existing := ne $s.existingSecret "" }}
{{- $all := list
  (dict "flag" "stripe-api-key" "name" "stripeApiKey" "on" $root.Values.stripe.enabled "scopes" (list "serve" "backfill") "provider" "stripe")
  (dict "flag" "stripe-webhook-secret" "name" "stripeWebhookSecret" "on" $root.Values.stripe.enabled "scopes" (list "serve") "provider" "stripe")
  (dict "flag" "orb-api-key" "name" "orbApiKey" "on" $root.Values.orb.enabled "scopes" (list "serve" "backfill") "provider" "orb")
  (dict "flag" "orb-webhook-secret" "name" "orbWebhookSecret" "on" $root.Values.orb.enabled "scopes" (list "serve") "provider" "orb")
  (dict "flag" "clickhouse-dsn" "name" "clickhouseDSN" "on" true "scopes" (list "serve" "backfill" "migrate") "provider" "")
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
{{- if and $use (has $scope .scopes) (or (eq $provider "") (eq .provider "") (eq .provider $provider)) }}
  - flag: {{ .flag }}
    key: {{ $key | quote }}
    name: {{ .name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Arguments shared by every syncd command. Takes {root, scope, provider}; a
provider (of a backfill) leaves out the other provider's flags.
*/}}
{{- define "syncd.commonArgs" -}}
{{- $v := .root.Values }}
{{- $provider := .provider | default "" }}
{{- $refs := (include "syncd.secretRefs" . | fromYaml).refs | default list }}
{{- $dsnFromSecret := false }}
{{- range $refs }}{{ if eq .flag "clickhouse-dsn" }}{{ $dsnFromSecret = true }}{{ end }}{{ end }}
{{- if and (not $dsnFromSecret) $v.config.clickhouseDSN }}
- --clickhouse-dsn={{ $v.config.clickhouseDSN }}
{{- end }}
{{- range $refs }}
- --{{ .flag }}-file=/etc/syncd/secrets/{{ .flag }}
{{- end }}
{{- with $v.config.clickhouseCluster }}
- --clickhouse-cluster={{ . }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.clickhouseInsertQuorum) }}
- --clickhouse-insert-quorum={{ $v.config.clickhouseInsertQuorum }}
{{- end }}
- --log-format={{ $v.config.logFormat }}
- --log-level={{ $v.config.logLevel }}
{{- if ne .scope "migrate" }}
{{- if and $v.stripe.enabled (has $provider (list "" "stripe")) }}
{{- with $v.stripe.apiURL }}
- --stripe-api-url={{ . }}
{{- end }}
{{- with $v.stripe.accounts }}
- --stripe-accounts={{ . }}
{{- end }}
{{- end }}
{{- if and $v.orb.enabled (has $provider (list "" "orb")) }}
{{- with $v.orb.apiURL }}
- --orb-api-url={{ . }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.rateLimit) }}
- --rate-limit={{ $v.config.rateLimit }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.endpointRateLimit) }}
- --endpoint-rate-limit={{ $v.config.endpointRateLimit }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.maxConcurrentRequests) }}
- --max-concurrent-requests={{ $v.config.maxConcurrentRequests }}
{{- end }}
{{- with $v.config.rateLimitScope }}
- --rate-limit-scope={{ . }}
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
Env of the serve container: see syncd.envFor.
*/}}
{{- define "syncd.env" -}}
{{- include "syncd.envFor" (dict "root" . "resources" .Values.resources) }}
{{- end }}

{{/*
Env of a syncd container with the given resources. Takes {root, resources}:
GOMEMLIMIT (syncd.goMemLimit) unless extraEnv sets it, then extraEnv
(non-secret settings only).
*/}}
{{- define "syncd.envFor" -}}
{{- $extra := .root.Values.extraEnv | default list }}
{{- $own := false }}
{{- range $extra }}{{ if eq .name "GOMEMLIMIT" }}{{ $own = true }}{{ end }}{{ end }}
{{- $limit := include "syncd.goMemLimit" . | trim }}
{{- if or $extra (and $limit (not $own)) }}
env:
{{- if and $limit (not $own) }}
  - name: GOMEMLIMIT
    value: {{ $limit | quote }}
{{- end }}
{{- with $extra }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
GOMEMLIMIT for a container: goMemLimitRatio of its resources.limits.memory,
in whole MiB (e.g. 460MiB for 512Mi at 0.9); empty without a memory limit or
with a ratio of 0. Takes {root, resources}. The Go runtime then collects
garbage harder as the heap nears it rather than growing into an OOM kill.
*/}}
{{- define "syncd.goMemLimit" -}}
{{- $ratio := float64 (.root.Values.goMemLimitRatio | default 0) }}
{{- $limit := "" }}
{{- with .resources }}{{ with .limits }}{{ with .memory }}
{{- if kindIs "string" . }}{{ $limit = . }}{{ else }}{{ $limit = printf "%.0f" (float64 .) }}{{ end }}
{{- end }}{{ end }}{{ end }}
{{- if and $limit (gt $ratio 0.0) }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?([kMGT]|[KMGT]i)?$" $limit) }}
{{- fail (printf "resources.limits.memory %q: give a number of bytes, optionally with k, M, G, T, Ki, Mi, Gi or Ti, to derive GOMEMLIMIT (or set goMemLimitRatio to 0)" $limit) }}
{{- end }}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 }}
{{- $number := regexReplaceAll "[A-Za-z]+$" $limit "" | float64 }}
{{- $unit := regexReplaceAll "^[0-9.]+" $limit "" }}
{{- $mib := divf (mulf (mulf $number (get $units $unit)) $ratio) 1048576.0 | floor | int64 }}
{{- if gt $mib 0 }}{{ printf "%dMiB" $mib }}{{ end }}
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
    {{- with (include "syncd.envFor" (dict "root" $root "resources" .resources) | trim) }}{{ . | nindent 4 }}{{- end }}
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

{{/*
The providers the full-backfill CronJobs sweep, as YAML {providers: [...]}:
backfillCronJob.providers, or the deprecated backfillCronJob.provider, or
else every enabled provider whose API key the chart mounts (none when no
key is mounted: there is nothing to sweep with). A provider listed without
its key fails the render.
*/}}
{{- define "syncd.sweepProviders" -}}
{{- $c := .Values.backfillCronJob }}
{{- $listed := $c.providers | default list }}
{{- if and $listed $c.provider }}
{{- fail "backfillCronJob: set providers or the deprecated provider, not both" }}
{{- end }}
{{- if $c.provider }}
{{- $listed = list $c.provider }}
{{- end }}
{{- $keyed := list }}
{{- range (include "syncd.secretRefs" (dict "root" . "scope" "backfill") | fromYaml).refs | default list }}
{{- if eq .flag "stripe-api-key" }}{{ $keyed = append $keyed "stripe" }}{{ end }}
{{- if eq .flag "orb-api-key" }}{{ $keyed = append $keyed "orb" }}{{ end }}
{{- end }}
{{- range $listed }}
{{- if not (has . $keyed) }}
{{- fail (printf "backfillCronJob sweeps %s, but the chart mounts no %s API key: set %s.enabled and the key (secrets.keys.%sApiKey in an existing Secret, or secrets.%sApiKey)" . . . . .) }}
{{- end }}
{{- end }}
{{- $out := $listed | default $keyed }}
providers: {{ toJson $out }}
{{- end }}
