{{/* Names, labels and the settings the chart derives for binderbuild. */}}

{{- define "binderbuild.fullname" -}}
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

{{/*
Selector labels. The name label is fixed to "binderbuild" (not nameOverride):
binderbuild labels its build pods with it, and the NetworkPolicies select
those pods by it.
*/}}
{{- define "binderbuild.selectorLabels" -}}
app.kubernetes.io/name: binderbuild
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "binderbuild.labels" -}}
{{ include "binderbuild.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end -}}

{{- define "binderbuild.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "binderbuild.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "binderbuild.buildServiceAccountName" -}}
{{- if .Values.build.serviceAccount.create -}}
{{- default (printf "%s-build" (include "binderbuild.fullname" .)) .Values.build.serviceAccount.name -}}
{{- else -}}
{{- .Values.build.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "binderbuild.hubNamespace" -}}
{{- default .Release.Namespace .Values.hub.namespace -}}
{{- end -}}

{{- define "binderbuild.pushSecretName" -}}
{{- if .Values.registry.existingPushSecret -}}
{{- .Values.registry.existingPushSecret -}}
{{- else if and .Values.registry.url .Values.registry.username -}}
{{- printf "%s-push" (include "binderbuild.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "binderbuild.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "binderbuild.socketPath" -}}
{{- printf "%s/docker.sock" (trimSuffix "/" .Values.builderDaemon.hostSocketDir) -}}
{{- end -}}

{{/*
Settings derived from the structured values, as traitlets config (a dict of
class name -> options). Written to chart_settings.json and applied by
binderbuild_config.py, i.e. *before* binderbuild_config.json (the `config`
value), so `config` overrides any of them.
*/}}
{{- define "binderbuild.chartSettings" -}}
{{- $bb := dict "build_class" "kubernetes" "ip" "0.0.0.0" "port" 8585 -}}
{{- with .Values.hub.url }}{{ $_ := set $bb "hub_url" . }}{{ end -}}
{{- with .Values.hub.localUrl }}{{ $_ := set $bb "hub_url_local" . }}{{ end -}}
{{- if .Values.registry.url }}{{ $_ := set $bb "use_registry" true }}{{ end -}}
{{- with .Values.build.memoryLimit }}{{ $_ := set $bb "build_memory_limit" (toString .) }}{{ end -}}
{{- $kb := dict
  "build_namespace" .Release.Namespace
  "instance_name" .Release.Name
  "build_image" (include "binderbuild.image" (dict "image" .Values.build.image "root" .))
  "build_image_pull_policy" .Values.build.image.pullPolicy
  "build_image_pull_secrets" .Values.build.imagePullSecrets
  "build_node_selector" .Values.build.nodeSelector
  "build_tolerations" .Values.build.tolerations
  "build_docker_host" (include "binderbuild.socketPath" .)
  "build_docker_socket_gid" .Values.builderDaemon.socketGid
  "build_network" .Values.build.network
  "build_service_account" (include "binderbuild.buildServiceAccountName" .)
  "build_cpu_request" (toString .Values.build.cpuRequest)
  "build_cpu_limit" (toString .Values.build.cpuLimit)
  "build_memory_request" (toString .Values.build.memoryRequest)
  "build_active_deadline_seconds" .Values.build.activeDeadlineSeconds
  "build_max_age" .Values.build.maxAgeSeconds
  "log_tail_lines" .Values.build.logTailLines
  "build_priority_class_name" .Values.build.priorityClassName
  "sticky_builds" .Values.build.stickyBuilds
  "builder_daemon_selector" (printf "app.kubernetes.io/name=binderbuild,app.kubernetes.io/instance=%s,app.kubernetes.io/component=image-builder" .Release.Name)
  "push_secret" (include "binderbuild.pushSecretName" .)
-}}
{{- $settings := dict "BinderBuild" $bb "KubernetesBuilder" $kb -}}
{{- if .Values.registry.url -}}
{{- $_ := set $settings "DockerRegistry" (dict "url" .Values.registry.url) -}}
{{- end -}}
{{- if .Values.quota.kubernetes.enabled -}}
{{- $_ := set $settings "HubLauncher" (dict "server_counter_class" "binderbuild.k8s_quota.PodCountCache") -}}
{{- $_ := set $settings "PodCountCache" (dict "namespace" (include "binderbuild.hubNamespace" .) "label_selector" .Values.quota.kubernetes.labelSelector) -}}
{{- end -}}
{{- toPrettyJson $settings -}}
{{- end -}}

{{/* The URL prefix binderbuild serves under, for probes. */}}
{{- define "binderbuild.baseUrl" -}}
{{- $bb := (.Values.config | default dict).BinderBuild | default dict -}}
{{- $base := default "/" $bb.base_url -}}
{{- printf "/%s/" (trimAll "/" $base) | replace "//" "/" -}}
{{- end -}}

{{/* The NetworkPolicy egress rules shared by build pods and the builder daemon. */}}
{{- define "binderbuild.publicEgress" -}}
# DNS, wherever the cluster resolver lives (kube-dns, node-local cache).
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
# The internet, but no private, link-local (cloud metadata) or cluster
# address: not the hub, not binderbuild, no other pod or service.
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: {{ toJson .Values.networkPolicy.deniedCIDRs }}
    - ipBlock:
        cidr: ::/0
        except: {{ toJson .Values.networkPolicy.deniedCIDRsV6 }}
{{- end -}}
