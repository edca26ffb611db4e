{{/*
Named templates. Those marked PUBLIC are the API for other charts that inject the sidecar into
their own pods (README.md, "Using the sidecar from another chart"). Each takes a context shaped
like a chart's root: a dict with "Values" (this chart's values: the parent's .Values.statecar
when statecar is a dependency) and "Release"; "Capabilities" is optional. Inside this chart,
pass `.`. Nothing here reads .Chart, so names come out the same from the parent's templates as
from this chart's own.
*/}}

{{- define "statecar.name" -}}
{{- default "statecar" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* PUBLIC: "<release>-statecar", or fullnameOverride. Prefix of every resource name. */}}
{{- define "statecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "statecar" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "statecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "statecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "statecar.labels" -}}
{{ include "statecar.selectorLabels" . }}
{{- if .Chart }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
app.kubernetes.io/part-of: statecar
{{- end -}}

{{- define "statecar.configMapName" -}}
{{- printf "%s-config" (include "statecar.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{- define "statecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "statecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with the upstream password ("" when there is none). */}}
{{- define "statecar.upstreamSecretName" -}}
{{- $u := .Values.statecar.upstream -}}
{{- if $u.existingSecret -}}
{{- $u.existingSecret -}}
{{- else if $u.password -}}
{{- printf "%s-upstream" (include "statecar.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{- define "statecar.upstreamSecretPasswordKey" -}}
{{- if .Values.statecar.upstream.existingSecret -}}
{{- .Values.statecar.upstream.existingSecretPasswordKey | default "password" -}}
{{- else -}}
password
{{- end -}}
{{- end -}}

{{/* The image tag when statecar.image.tag is empty: the chart's appVersion, also when the
context has no .Chart (a parent chart's include). .ci/deploy-checks.sh keeps the two equal. */}}
{{- define "statecar.appVersion" -}}0.1.0{{- end -}}

{{- define "statecar.image" -}}
{{- $img := .Values.statecar.image -}}
{{- $tag := $img.tag | default (include "statecar.appVersion" .) -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (toString $tag) -}}
{{- end -}}
{{- end -}}

{{/* PUBLIC: "native" or "regular"; fails on anything else, or on native for a cluster older
than 1.29 (when the context carries .Capabilities). */}}
{{- define "statecar.mode" -}}
{{- $mode := .Values.sidecar.mode | default "native" -}}
{{- if not (has $mode (list "native" "regular")) -}}
{{- fail (printf "sidecar.mode must be native or regular, not %q" $mode) -}}
{{- end -}}
{{- if and (eq $mode "native") .Capabilities -}}
{{- if semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version -}}
{{- fail (printf "sidecar.mode=native needs Kubernetes 1.29 or newer (native sidecars); this cluster is %s: set sidecar.mode=regular" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* host:port strings and ports of the two listeners. */}}
{{- define "statecar.listen" -}}
{{- .Values.statecar.config.listen | default "127.0.0.1:6380" -}}
{{- end -}}

{{- define "statecar.metricsListen" -}}
{{- $m := .Values.statecar.config.metrics | default dict -}}
{{- $m.listen | default "0.0.0.0:9121" -}}
{{- end -}}

{{- define "statecar.portOf" -}}
{{- $p := regexFind "[0-9]+$" . -}}
{{- if not $p -}}
{{- fail (printf "statecar: %q is not an address like 127.0.0.1:6380" .) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{- define "statecar.port" -}}
{{- include "statecar.portOf" (include "statecar.listen" .) -}}
{{- end -}}

{{- define "statecar.metricsPort" -}}
{{- include "statecar.portOf" (include "statecar.metricsListen" .) -}}
{{- end -}}

{{/* PUBLIC: the URL the application uses to reach statecar, e.g. redis://127.0.0.1:6380. A
wildcard listen address (0.0.0.0, [::]) is reached on the pod's loopback. */}}
{{- define "statecar.redisUrl" -}}
{{- $listen := include "statecar.listen" . -}}
{{- $port := include "statecar.portOf" $listen -}}
{{- $host := trimSuffix (printf ":%s" $port) $listen -}}
{{- if has $host (list "" "0.0.0.0" "[::]" "::") -}}
{{- $host = "127.0.0.1" -}}
{{- end -}}
{{- printf "redis://%s:%s" $host $port -}}
{{- end -}}

{{/*
statecar.toml from .Values.statecar.config, with upstream.url from .Values.statecar.upstream.url.
A small TOML writer: plain keys first, then [tables], then [[arrays of tables]]; null values,
empty tables and empty lists are left out (statecar's defaults apply). Numbers go through toJson, so 536870912 stays an integer instead of 5.36870912e+08.
*/}}
{{- define "statecar.configToml" -}}
{{- $cfg := deepCopy (.Values.statecar.config | default dict) -}}
{{- $up := get $cfg "upstream" | default dict -}}
{{- $_ := set $up "url" .Values.statecar.upstream.url -}}
{{- $_ := set $cfg "upstream" $up -}}
{{- /* The client memory budget: half the container's memory limit unless set. */ -}}
{{- $lim := get $cfg "limits" | default dict -}}
{{- $mem := ((.Values.statecar.resources | default dict).limits | default dict).memory -}}
{{- if and $mem (not (hasKey $lim "max_client_memory")) -}}
{{- $_ := set $lim "max_client_memory" (div (include "statecar.memoryBytes" $mem | atoi) 2) -}}
{{- $_ := set $cfg "limits" $lim -}}
{{- end -}}
# statecar.toml, rendered by the statecar Helm chart from its values (statecar.config).
# The upstream password comes from a Secret through STATECAR_UPSTREAM_PASSWORD, not from here.
{{ include "statecar.tomlTable" (dict "table" $cfg "prefix" "") }}
{{- end -}}

{{/*
A Kubernetes memory quantity ("512Mi", "1G", "268435456") in bytes.
*/}}
{{- define "statecar.memoryBytes" -}}
{{- $q := toString . -}}
{{- $n := regexFind "^[0-9]+" $q -}}
{{- $unit := trimPrefix $n $q -}}
{{- $mul := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000) $unit -}}
{{- if or (not $n) (kindIs "invalid" $mul) -}}
{{- fail (printf "statecar.resources.limits.memory: cannot read %q as a memory quantity" $q) -}}
{{- end -}}
{{- mul ($n | atoi) $mul -}}
{{- end -}}

{{- define "statecar.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "statecar.tomlIsTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- if kindIs "map" (first .) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "statecar.tomlValue" -}}
{{- if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . -}}{{- $items = append $items (include "statecar.tomlValue" .) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else if kindIs "map" . -}}
{{- fail "statecar.config: inline tables are not supported here" -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{- define "statecar.tomlTable" -}}
{{- $t := .table -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := $t }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (and (kindIs "slice" $v) (empty $v))) (not (include "statecar.tomlIsTableArray" $v)) }}
{{ include "statecar.tomlKey" $k }} = {{ include "statecar.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $t }}
{{- if and (kindIs "map" $v) (not (empty $v)) }}
{{- $name := ternary (include "statecar.tomlKey" $k) (printf "%s.%s" $prefix (include "statecar.tomlKey" $k)) (eq $prefix "") }}

[{{ $name }}]
{{- include "statecar.tomlTable" (dict "table" $v "prefix" $name) }}
{{- end }}
{{- end }}
{{- range $k, $v := $t }}
{{- if include "statecar.tomlIsTableArray" $v }}
{{- $name := ternary (include "statecar.tomlKey" $k) (printf "%s.%s" $prefix (include "statecar.tomlKey" $k)) (eq $prefix "") }}
{{- range $item := $v }}

[[{{ $name }}]]
{{- include "statecar.tomlTable" (dict "table" $item "prefix" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* PUBLIC: pod annotations: the config checksum (rolls pods when it changes) and the
prometheus.io scrape annotations. A YAML map body without leading newline; may be empty. */}}
{{- define "statecar.podAnnotations" -}}
{{- $a := dict -}}
{{- if .Values.statecar.rollOnConfigChange -}}
{{- $_ := set $a "checksum/statecar-config" (include "statecar.configToml" . | sha256sum) -}}
{{- end -}}
{{- if .Values.metrics.podAnnotations -}}
{{- $_ := set $a "prometheus.io/scrape" "true" -}}
{{- $_ := set $a "prometheus.io/port" (include "statecar.metricsPort" .) -}}
{{- $_ := set $a "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- if $a -}}
{{- toYaml $a -}}
{{- end -}}
{{- end -}}

{{/* PUBLIC: the pod volumes of the sidecar: statecar.toml's ConfigMap and
statecar.extraVolumes. A YAML list body. */}}
{{- define "statecar.volumes" -}}
- name: statecar-config
  configMap:
    name: {{ include "statecar.configMapName" . }}
{{- with .Values.statecar.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* PUBLIC: the env entry that points an application container at statecar. */}}
{{- define "statecar.appEnv" -}}
{{- $name := .Values.app.redisUrlEnv | default "REDIS_URL" -}}
- name: {{ $name }}
  value: {{ include "statecar.redisUrl" . | quote }}
{{- end -}}

{{- define "statecar.httpProbe" -}}
{{- $p := .probe -}}
httpGet:
  path: {{ $p.path }}
  port: {{ .port }}
{{- with $p.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ $p.periodSeconds | default 10 }}
timeoutSeconds: {{ $p.timeoutSeconds | default 1 }}
failureThreshold: {{ $p.failureThreshold | default 3 }}
{{- end -}}

{{/* PUBLIC: the statecar container, as one YAML list item. In native mode it carries
restartPolicy: Always and belongs in initContainers; in regular mode it belongs in containers.
"statecar.initContainers" and "statecar.containers" place it for you. */}}
{{- define "statecar.sidecar" -}}
{{- $sc := .Values.statecar -}}
{{- $mode := include "statecar.mode" . -}}
{{- $metricsPort := include "statecar.metricsPort" . | int -}}
{{- $secret := include "statecar.upstreamSecretName" . -}}
- name: {{ $sc.containerName | default "statecar" }}
  image: {{ include "statecar.image" . | quote }}
  imagePullPolicy: {{ $sc.image.pullPolicy | default "IfNotPresent" }}
  {{- if eq $mode "native" }}
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - /etc/statecar/statecar.toml
  env:
    - name: STATECAR_LISTEN
      value: {{ include "statecar.listen" . | quote }}
    - name: STATECAR_METRICS_LISTEN
      value: {{ include "statecar.metricsListen" . | quote }}
    {{- if $secret }}
    - name: STATECAR_UPSTREAM_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ include "statecar.upstreamSecretPasswordKey" . }}
    {{- end }}
    {{- if and $sc.upstream.existingSecret $sc.upstream.existingSecretUrlKey }}
    - name: STATECAR_UPSTREAM
      valueFrom:
        secretKeyRef:
          name: {{ $sc.upstream.existingSecret }}
          key: {{ $sc.upstream.existingSecretUrlKey }}
    {{- end }}
    {{- with $sc.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: statecar
      containerPort: {{ include "statecar.port" . | int }}
      protocol: TCP
    - name: sc-metrics
      containerPort: {{ $metricsPort }}
      protocol: TCP
  {{- if $sc.startupProbe.enabled }}
  startupProbe:
    {{- include "statecar.httpProbe" (dict "probe" $sc.startupProbe "port" $metricsPort) | nindent 4 }}
  {{- end }}
  {{- if $sc.livenessProbe.enabled }}
  livenessProbe:
    {{- include "statecar.httpProbe" (dict "probe" $sc.livenessProbe "port" $metricsPort) | nindent 4 }}
  {{- end }}
  {{- if $sc.readinessProbe.enabled }}
  readinessProbe:
    {{- include "statecar.httpProbe" (dict "probe" $sc.readinessProbe "port" $metricsPort) | nindent 4 }}
  {{- end }}
  {{- with $sc.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $sc.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $sc.lifecycle }}
  lifecycle:
    {{- toYaml $sc.lifecycle | nindent 4 }}
  {{- else if and (eq $mode "regular") (gt (int (.Values.sidecar.regularPreStopSleepSeconds | default 0)) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ int .Values.sidecar.regularPreStopSleepSeconds }}"]
  {{- end }}
  volumeMounts:
    - name: statecar-config
      mountPath: /etc/statecar
      readOnly: true
    {{- with $sc.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* PUBLIC: the sidecar if it belongs in initContainers (native mode), else nothing. */}}
{{- define "statecar.initContainers" -}}
{{- if eq (include "statecar.mode" .) "native" -}}
{{- include "statecar.sidecar" . -}}
{{- end -}}
{{- end -}}

{{/* PUBLIC: the sidecar if it belongs in containers (regular mode), else nothing. */}}
{{- define "statecar.containers" -}}
{{- if eq (include "statecar.mode" .) "regular" -}}
{{- include "statecar.sidecar" . -}}
{{- end -}}
{{- end -}}

{{- define "statecar.metricsSelector" -}}
{{- if .Values.metrics.service.selector -}}
{{- toYaml .Values.metrics.service.selector -}}
{{- else -}}
{{- include "statecar.selectorLabels" . -}}
{{- end -}}
{{- end -}}
