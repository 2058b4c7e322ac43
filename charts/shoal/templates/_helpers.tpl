{{/* Names ------------------------------------------------------------------ */}}

{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.fullname" -}}
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

{{/* Component names are fullname-component, kept under 63 characters. */}}
{{- define "shoal.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "shoal.fullname" . | trunc 53 | trimSuffix "-") -}}
{{- end -}}
{{- define "shoal.peer.fullname" -}}
{{- printf "%s-peer" (include "shoal.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}
{{- define "shoal.cleanup.fullname" -}}
{{- printf "%s-cleanup" (include "shoal.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}
{{- define "shoal.restore.fullname" -}}
{{- printf "%s-restore" (include "shoal.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}
{{- define "shoal.peerTlsSecretName" -}}
{{- .Values.peer.tls.existingSecret | default (printf "%s-peer-tls" (include "shoal.fullname" . | trunc 54 | trimSuffix "-")) -}}
{{- end -}}
{{- define "shoal.operatorTokenSecretName" -}}
{{- .Values.scheduler.operatorToken.existingSecret | default (printf "%s-operator-token" (include "shoal.fullname" . | trunc 47 | trimSuffix "-")) -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "peer"). */}}
{{- define "shoal.labels" -}}
{{ include "shoal.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: shoal
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* On the scheduler's headless Service only, which the ServiceMonitor excludes. */}}
{{- define "shoal.discoveryLabel" -}}
shoal.io/replica-discovery: "true"
{{- end -}}

{{- define "shoal.componentSelector" -}}
{{ include "shoal.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A top-level object's metadata.annotations: commonAnnotations merged with
`extra` (which wins); call right after the labels with
  {{- include "shoal.annotations" (dict "ctx" $ "extra" .Values.x.annotations) }}
Prints nothing when both are empty. */}}
{{- define "shoal.annotations" -}}
{{- $all := merge (dict) (.extra | default dict) (.ctx.Values.commonAnnotations | default dict) -}}
{{- with $all -}}
{{- printf "\n  annotations:\n%s" (toYaml . | indent 4) -}}
{{- end -}}
{{- end -}}

{{/* Image ------------------------------------------------------------------ */}}

{{- define "shoal.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* containerd layout -------------------------------------------------------
The preset's config file and hosts directories (docs/platforms/), with the
overrides from values applied. Returns YAML: configFile, configDir, hostsDirs,
configure. */}}
{{- define "shoal.containerd" -}}
{{- $presets := dict
  "containerd" (dict "configFile" "/etc/containerd/config.toml" "hostsDirs" (list "/etc/containerd/certs.d") "configure" true)
  "eks" (dict "configFile" "/etc/containerd/config.toml" "hostsDirs" (list "/etc/containerd/certs.d" "/etc/docker/certs.d") "configure" true)
  "k3s" (dict "configFile" "/var/lib/rancher/k3s/agent/etc/containerd/config.toml" "hostsDirs" (list "/var/lib/rancher/k3s/agent/etc/containerd/certs.d") "configure" true)
  "rke2" (dict "configFile" "/var/lib/rancher/rke2/agent/etc/containerd/config.toml" "hostsDirs" (list "/var/lib/rancher/rke2/agent/etc/containerd/certs.d") "configure" true)
  "talos" (dict "configFile" "/etc/cri/containerd.toml" "hostsDirs" (list "/etc/cri/conf.d/hosts") "configure" false)
-}}
{{- $c := .Values.containerd -}}
{{- $p := required (printf "containerd.preset %q is not one of containerd, eks, k3s, rke2, talos" $c.preset) (get $presets $c.preset) -}}
{{- $file := $c.configFile | default $p.configFile -}}
{{- $configure := $p.configure -}}
{{- if not (kindIs "invalid" $c.configure) }}{{ $configure = $c.configure }}{{ end -}}
configFile: {{ $file | quote }}
configDir: {{ dir $file | quote }}
hostsDirs: {{ $c.hostsDirs | default $p.hostsDirs | toJson }}
configure: {{ $configure }}
{{- end -}}

{{/* A volume name for a host path: a stable, DNS-1123 label. */}}
{{- define "shoal.hostVolumeName" -}}
{{- printf "%s-%s" .prefix (sha256sum .path | trunc 10) -}}
{{- end -}}

{{/* hostPath volumes for containerd's config dir (only read by configure and
restore) and the hosts dirs; shared by the peer DaemonSet and the restore hook. */}}
{{- define "shoal.containerdVolumes" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
{{- if $cd.configure }}
- name: containerd-config
  hostPath:
    path: {{ $cd.configDir }}
    type: Directory
{{- end }}
{{- range $cd.hostsDirs }}
- name: {{ include "shoal.hostVolumeName" (dict "prefix" "hosts" "path" .) }}
  hostPath:
    path: {{ . }}
    type: DirectoryOrCreate
{{- end }}
{{- end -}}

{{/* Mounts of those volumes for `shoal-peer containerd configure|restore`:
every host path under /host (the command's --root), the config read-only. */}}
{{- define "shoal.containerdSetupMounts" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
- name: containerd-config
  mountPath: {{ printf "/host%s" $cd.configDir }}
  readOnly: true
{{- range $cd.hostsDirs }}
- name: {{ include "shoal.hostVolumeName" (dict "prefix" "hosts" "path" .) }}
  mountPath: {{ printf "/host%s" . }}
{{- end }}
{{- end -}}

{{/* The flags configure and restore share. */}}
{{- define "shoal.containerdSetupArgs" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
- --root=/host
- --containerd-config={{ $cd.configFile }}
{{- range .Values.containerd.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level securityContext of the node pods (peer, restore): root, with an
optional SELinux type. */}}
{{- define "shoal.nodePodSecurityContext" -}}
runAsUser: 0
runAsGroup: 0
seccompProfile:
  type: RuntimeDefault
{{- with .Values.peer.selinuxType }}
seLinuxOptions:
  type: {{ . }}
{{- end }}
{{- end -}}

{{/* The securityContext of containers that write containerd's hosts files:
root (the files are root's), only the capabilities a file owner needs to
replace a file while keeping its mode and owner. */}}
{{- define "shoal.setupSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  add: ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
{{- end -}}

{{/* The scheduler's gRPC URL as the peers dial it. */}}
{{- define "shoal.schedulerUrl" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "shoal.scheduler.fullname" .) .Release.Namespace .Values.clusterDomain .Values.scheduler.grpcPort -}}
{{- end -}}
