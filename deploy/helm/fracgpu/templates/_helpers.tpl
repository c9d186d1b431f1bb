{{/* The chart's objects keep deploy/'s fixed names: a second release in the same cluster is not supported
(the ClusterRoles, the RuntimeClass and the webhook are cluster-wide). */}}

{{/* The extender's own identity: the only user admission lets write assignments. */}}
{{- define "fracgpu.extenderUser" -}}
system:serviceaccount:{{ .Values.namespaces.scheduler }}:fracgpu-scheduler
{{- end }}

{{/* The admission Service's DNS name, which the serving certificate must carry. */}}
{{- define "fracgpu.admissionHost" -}}
fracgpu-admission.{{ .Values.namespaces.scheduler }}.svc
{{- end }}

{{/* The extender's address as kube-scheduler calls it: its own pod's loopback. */}}
{{- define "fracgpu.extenderURL" -}}
{{ if .Values.extender.tls.enabled }}https{{ else }}http{{ end }}://127.0.0.1:{{ .Values.extender.port }}
{{- end }}

{{/* A node component's RuntimeClass: its own value where set ("" for none), else the first of
runtimeClass.names. */}}
{{- define "fracgpu.runtimeClass" -}}
{{- if kindIs "invalid" .own }}{{ first .names | default "" }}{{ else }}{{ .own }}{{ end }}
{{- end }}

{{/* The fracgpu image. */}}
{{- define "fracgpu.image" -}}
image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}   # built from this repository's Dockerfile
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end }}

{{/* Values that only make sense together, checked before anything renders. */}}
{{- define "fracgpu.check" -}}
{{- if and .Values.admission.enabled (eq (len .Values.runtimeClass.names) 0) }}
{{- fail "runtimeClass.names: admission needs at least one RuntimeClass of the NVIDIA runtime (it gives the first to fracgpu pods)" }}
{{- end }}
{{- if eq (int .Values.extender.port) (int .Values.extender.probePort) }}
{{- fail "extender.probePort: must differ from extender.port" }}
{{- end }}
{{- if and .Values.admission.enabled (or (eq (int .Values.admission.port) (int .Values.extender.port)) (eq (int .Values.admission.port) (int .Values.extender.probePort))) }}
{{- fail "admission.port: must differ from extender.port and extender.probePort" }}
{{- end }}
{{- range $name, $port := dict "extender.port" .Values.extender.port "extender.probePort" .Values.extender.probePort "admission.port" .Values.admission.port }}
{{- if eq (int $port) 10259 }}
{{- fail (printf "%s: 10259 is kube-scheduler's secure port, in the same pod" $name) }}
{{- end }}
{{- end }}
{{- if eq .Values.namespaces.scheduler .Values.namespaces.node }}
{{- fail "namespaces.node: must differ from namespaces.scheduler (the node components need Pod Security privileged, the scheduler's is restricted)" }}
{{- end }}
{{- if and .Values.admission.tls.caBundle .Values.admission.tls.certManagerCertificate }}
{{- fail "admission.tls: give caBundle or certManagerCertificate, not both" }}
{{- end }}
{{- end }}

{{/* The namespaces the webhook leaves alone: the chart's own two and admission.excludedNamespaces. */}}
{{- define "fracgpu.excludedNamespaces" -}}
{{ concat (list .Values.namespaces.scheduler .Values.namespaces.node) .Values.admission.excludedNamespaces | uniq | join ", " }}
{{- end }}

{{/* CEL: a limit key `k` is one of fracgpu's resources (their domain prefixes: fracgpu.io/ by default). */}}
{{- define "fracgpu.resourceCEL" -}}
{{- $prefixes := list }}
{{- range list .Values.resourceNames.vgpu .Values.resourceNames.memory }}
{{- $prefixes = append $prefixes (regexReplaceAll "[^/]*$" . "") }}
{{- end }}
{{- $checks := list }}
{{- range $prefixes | uniq }}
{{- $checks = append $checks (printf "k.startsWith('%s')" .) }}
{{- end }}
{{- join " || " $checks }}
{{- end }}
