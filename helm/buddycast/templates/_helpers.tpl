{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "buddycast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already holds the chart name.
*/}}
{{- define "buddycast.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "buddycast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "buddycast.labels" -}}
helm.sh/chart: {{ include "buddycast.chart" . }}
{{ include "buddycast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: buddycast
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by all components.
*/}}
{{- define "buddycast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "buddycast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Call with (dict "ctx" $ "component" "node").
*/}}
{{- define "buddycast.componentLabels" -}}
{{ include "buddycast.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "node").
*/}}
{{- define "buddycast.componentSelectorLabels" -}}
{{ include "buddycast.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Name of the ServiceAccount of the node and worker pods.
*/}}
{{- define "buddycast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "buddycast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the migration Job: hooks run before the chart's own ServiceAccount exists.
*/}}
{{- define "buddycast.migrationsServiceAccountName" -}}
{{- if .Values.migrations.serviceAccountName }}
{{- .Values.migrations.serviceAccountName }}
{{- else if not .Values.serviceAccount.create }}
{{- default "default" .Values.serviceAccount.name }}
{{- else }}
{{- print "default" }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag, or repository@digest when a digest is pinned.
*/}}
{{- define "buddycast.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the secret settings: the existing one or the chart's.
*/}}
{{- define "buddycast.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-secrets" (include "buddycast.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Key of one setting in the Secret. Call with (dict "ctx" $ "key" "jwtSecret").
*/}}
{{- define "buddycast.secretKey" -}}
{{- if .ctx.Values.secrets.existingSecret }}
{{- index .ctx.Values.secrets.existingSecretKeys .key }}
{{- else }}
{{- index (dict "jwtSecret" "BUDDYCAST_JWT_SECRET" "apiKey" "BUDDYCAST_API_KEY" "databaseUrl" "BUDDYCAST_DATABASE_URL" "redisUrl" "BUDDYCAST_REDIS_URL") .key }}
{{- end }}
{{- end }}

{{/*
env entries reading secret settings. Call with (dict "ctx" $ "keys" (list "redisUrl" ...)).
*/}}
{{- define "buddycast.secretEnv" -}}
{{- $ctx := .ctx }}
{{- $names := dict "jwtSecret" "BUDDYCAST_JWT_SECRET" "apiKey" "BUDDYCAST_API_KEY" "databaseUrl" "BUDDYCAST_DATABASE_URL" "redisUrl" "BUDDYCAST_REDIS_URL" }}
{{- range .keys }}
- name: {{ index $names . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "buddycast.secretName" $ctx }}
      key: {{ include "buddycast.secretKey" (dict "ctx" $ctx "key" .) }}
{{- end }}
{{- end }}

{{/*
A setting as an environment string. Helm reads numbers as floats, and a float prints
as 1e+06 from a million up: whole numbers are printed as integers.
*/}}
{{- define "buddycast.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . | toString }}
{{- else if kindIs "slice" . }}
{{- join "," . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Checksum of the settings, so pods roll when the ConfigMap or the chart's Secret changes.
*/}}
{{- define "buddycast.configChecksum" -}}
{{- $config := include (print .Template.BasePath "/configmap.yaml") . }}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . }}
{{- print $config $secret | sha256sum }}
{{- end }}

{{/*
Topology spread constraints; a constraint without labelSelector gets the component's
selector labels. Call with (dict "ctx" $ "component" "node" "constraints" list).
*/}}
{{- define "buddycast.topologySpreadConstraints" -}}
{{- $selector := include "buddycast.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml }}
{{- range .constraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/*
The /tmp emptyDir: the root filesystem is read-only.
*/}}
{{- define "buddycast.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/*
Fail early, with one line, when the chart would create a Secret with a missing setting.
*/}}
{{- define "buddycast.validateSecrets" -}}
{{- if not .Values.secrets.existingSecret }}
{{- $_ := required "secrets.jwtSecret is required (or set secrets.existingSecret)" .Values.secrets.jwtSecret }}
{{- $_ := required "secrets.apiKey is required (or set secrets.existingSecret)" .Values.secrets.apiKey }}
{{- $_ := required "secrets.databaseUrl is required (or set secrets.existingSecret)" .Values.secrets.databaseUrl }}
{{- $_ := required "secrets.redisUrl is required (or set secrets.existingSecret)" .Values.secrets.redisUrl }}
{{- if lt (len .Values.secrets.jwtSecret) 16 }}
{{- fail "secrets.jwtSecret must be at least 16 characters" }}
{{- end }}
{{- if lt (len .Values.secrets.apiKey) 16 }}
{{- fail "secrets.apiKey must be at least 16 characters" }}
{{- end }}
{{- end }}
{{- end }}
