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

{{/*
An image reference from {repository, tag}; `name` is the values key, for the
message. binderbuild's images are not published anywhere: the operator builds
and pushes them, so there is nothing to default to and the chart refuses to
render without them. A tag that is a digest (sha256:...) pins the image.
*/}}
{{- define "binderbuild.image" -}}
{{- $why := "binderbuild's images are not published anywhere. Build and push them (the Dockerfile at the repository root for image, images/builder/Dockerfile for build.image), then set repository and tag to what you pushed: see docs/kubernetes.md, \"Build and push the images\"" -}}
{{- $repository := required (printf "%s.repository is not set: %s" .name $why) .image.repository -}}
{{- $tag := required (printf "%s.tag is not set: %s" .name $why) .image.tag -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" $repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The builder daemon's directories on the node: one pair per namespace and
release, so two releases sharing nodes never share a daemon, a socket or a
layer cache. KubernetesBuilder's default socket follows the same layout
(binderbuild.builders.pod_manifests.default_docker_socket).
*/}}
{{- define "binderbuild.hostSocketDir" -}}
{{- if .Values.builderDaemon.hostSocketDir -}}
{{- trimSuffix "/" .Values.builderDaemon.hostSocketDir -}}
{{- else -}}
{{- printf "/var/run/binderbuild-dind/%s/%s" .Release.Namespace .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "binderbuild.hostLibDir" -}}
{{- if .Values.builderDaemon.hostLibDir -}}
{{- trimSuffix "/" .Values.builderDaemon.hostLibDir -}}
{{- else -}}
{{- printf "/var/lib/binderbuild-dind/%s/%s" .Release.Namespace .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "binderbuild.socketPath" -}}
{{- printf "%s/docker.sock" (include "binderbuild.hostSocketDir" .) -}}
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
  "build_image" (include "binderbuild.image" (dict "image" .Values.build.image "name" "build.image"))
  "build_image_pull_policy" .Values.build.image.pullPolicy
  "build_image_pull_secrets" .Values.build.imagePullSecrets
  "build_node_selector" .Values.build.nodeSelector
  "build_tolerations" .Values.build.tolerations
  "build_node_affinity" (.Values.build.nodeAffinity | default dict)
  "build_user_nodes" .Values.build.userNodes
  "build_docker_host" (include "binderbuild.socketPath" .)
  "build_docker_socket_gid" .Values.builderDaemon.socketGid
  "build_network" .Values.build.network
  "sandbox_uid" .Values.build.sandbox.uid
  "sandbox_memory_limit" (toString .Values.build.sandbox.memoryLimit)
  "allowed_registries" .Values.build.allowedRegistries
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
{{- $lifecycle := .Values.registry.lifecycle -}}
{{- if (ternary .Values.registry.inCluster.enabled $lifecycle.enabled (kindIs "invalid" $lifecycle.enabled)) -}}
{{- $_ := set $settings "RegistryLifecycle" (dict "enabled" true "budget" (include "binderbuild.registryBudget" .) "keep_days" $lifecycle.keepDays) -}}
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

{{/*
Zero to JupyterHub's user-node tolerations (both spellings of its taint), as
KubernetesBuilder adds them to build pods
(binderbuild.builders.pod_manifests.Z2JH_USER_TOLERATIONS).
*/}}
{{- define "binderbuild.userNodeTolerations" -}}
- key: hub.jupyter.org/dedicated
  operator: Equal
  value: user
  effect: NoSchedule
- key: hub.jupyter.org_dedicated
  operator: Equal
  value: user
  effect: NoSchedule
{{- end -}}

{{/* The registry lifecycle's byte budget: registry.lifecycle.budget, else 80 %
of registry.storage (in MiB). */}}
{{- define "binderbuild.registryBudget" -}}
{{- if .Values.registry.lifecycle.budget -}}
{{- .Values.registry.lifecycle.budget -}}
{{- else -}}
{{- $size := .Values.registry.storage -}}
{{- $number := regexFind "^[0-9]+" $size | int -}}
{{- $mib := dict "Mi" 1 "Gi" 1024 "Ti" 1048576 -}}
{{- $factor := get $mib (trimPrefix (toString $number) $size) | int -}}
{{- printf "%dM" (div (mul $number $factor 80) 100) -}}
{{- end -}}
{{- end -}}
