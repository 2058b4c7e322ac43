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
{{- define "shoal.schedulerTlsSecretName" -}}
{{- .Values.scheduler.tls.existingSecret | default (printf "%s-scheduler-tls" (include "shoal.fullname" . | trunc 49 | trimSuffix "-")) -}}
{{- end -}}
{{- define "shoal.issuerCaSecretName" -}}
{{- .Values.peer.identity.tokenReview.existingCASecret | default (printf "%s-issuer-ca" (include "shoal.fullname" . | trunc 52 | trimSuffix "-")) -}}
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
overrides from values applied. Returns YAML: runtime (containerd, or crio for
CRI-O, whose configFile is registries.conf and whose one "hosts dir" is the
registries.conf.d drop-in directory), configFile, configDir, hostsDirs,
configure, contentDir (containerd's content store; "" when it is not shared, and
for CRI-O). */}}
{{- define "shoal.containerd" -}}
{{- $presets := dict
  "containerd" (dict "runtime" "containerd" "configFile" "/etc/containerd/config.toml" "hostsDirs" (list "/etc/containerd/certs.d") "configure" true "contentDir" "/var/lib/containerd/io.containerd.content.v1.content")
  "eks" (dict "runtime" "containerd" "configFile" "/etc/containerd/config.toml" "hostsDirs" (list "/etc/containerd/certs.d" "/etc/docker/certs.d") "configure" true "contentDir" "/var/lib/containerd/io.containerd.content.v1.content")
  "k3s" (dict "runtime" "containerd" "configFile" "/var/lib/rancher/k3s/agent/etc/containerd/config.toml" "hostsDirs" (list "/var/lib/rancher/k3s/agent/etc/containerd/certs.d") "configure" true "contentDir" "/var/lib/rancher/k3s/agent/containerd/io.containerd.content.v1.content")
  "rke2" (dict "runtime" "containerd" "configFile" "/var/lib/rancher/rke2/agent/etc/containerd/config.toml" "hostsDirs" (list "/var/lib/rancher/rke2/agent/etc/containerd/certs.d") "configure" true "contentDir" "/var/lib/rancher/rke2/agent/containerd/io.containerd.content.v1.content")
  "talos" (dict "runtime" "containerd" "configFile" "/etc/cri/containerd.toml" "hostsDirs" (list "/etc/cri/conf.d/hosts") "configure" false "contentDir" "/var/lib/containerd/io.containerd.content.v1.content")
  "crio" (dict "runtime" "crio" "configFile" "/etc/containers/registries.conf" "hostsDirs" (list "/etc/containers/registries.conf.d") "configure" true "contentDir" "")
-}}
{{- $c := .Values.containerd -}}
{{- $p := required (printf "containerd.preset %q is not one of containerd, eks, k3s, rke2, talos, crio" $c.preset) (get $presets $c.preset) -}}
{{- $file := $c.configFile | default $p.configFile -}}
{{- $configure := $p.configure -}}
{{- if not (kindIs "invalid" $c.configure) }}{{ $configure = $c.configure }}{{ end -}}
runtime: {{ $p.runtime }}
configFile: {{ $file | quote }}
configDir: {{ dir $file | quote }}
hostsDirs: {{ $c.hostsDirs | default $p.hostsDirs | toJson }}
configure: {{ $configure }}
contentDir: {{ ternary ($c.contentDir | default $p.contentDir) "" (ne $c.shareContentStore false) | quote }}
{{- end -}}

{{/* A volume name for a host path: a stable, DNS-1123 label. */}}
{{- define "shoal.hostVolumeName" -}}
{{- printf "%s-%s" .prefix (sha256sum .path | trunc 10) -}}
{{- end -}}

{{/* hostPath volumes for containerd's config dir (only read by configure and
restore) and the hosts dirs; shared by the peer DaemonSet and the restore hook. */}}
{{- define "shoal.containerdVolumes" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
{{- if or $cd.configure (eq $cd.runtime "crio") }}
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

{{/* The node setup command (`containerd`, or `containers` for CRI-O). */}}
{{- define "shoal.setupCommand" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
{{- ternary "containers" "containerd" (eq $cd.runtime "crio") -}}
{{- end -}}

{{/* The flags configure and restore share. */}}
{{- define "shoal.containerdSetupArgs" -}}
{{- $cd := fromYaml (include "shoal.containerd" .) -}}
- --root=/host
{{- if eq $cd.runtime "crio" }}
- --registries-conf={{ $cd.configFile }}
- --registries-conf-dir={{ first $cd.hostsDirs }}
{{- else }}
- --containerd-config={{ $cd.configFile }}
{{- end }}
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

{{/* TLS and identity -------------------------------------------------------- */}}

{{/* The scheduler's gRPC URL as the peers dial it: https (mutual TLS), http only
with the development switch. The host is the last of shoal.schedulerDnsNames. */}}
{{- define "shoal.schedulerUrl" -}}
{{- printf "%s://%s:%v" (ternary "http" "https" .Values.scheduler.insecurePlaintext) (include "shoal.schedulerDnsNames" . | fromJsonArray | last) .Values.scheduler.grpcPort -}}
{{- end -}}

{{/* The certificate issuer's URL as the peers dial it (peer.identity.mode=
tokenReview): the scheduler's Service name, the issuer port, TLS. */}}
{{- define "shoal.issuerUrl" -}}
{{- printf "https://%s:%v" (include "shoal.schedulerDnsNames" . | fromJsonArray | last) .Values.scheduler.issuerPort -}}
{{- end -}}

{{/* The DNS names of the scheduler's serving certificate (JSON list): the
headless Service's name (the peers find every replica under it and verify each
for it) and the Service's, each as seen from its namespace, from others, and
fully qualified. The Service's fully qualified name comes last. */}}
{{- define "shoal.schedulerDnsNames" -}}
{{- $s := include "shoal.scheduler.fullname" . -}}
{{- $h := printf "%s-headless" $s -}}
{{- $ns := .Release.Namespace -}}
{{- list $h (printf "%s.%s" $h $ns) (printf "%s.%s.svc" $h $ns) (printf "%s.%s.svc.%s" $h $ns .Values.clusterDomain) $s (printf "%s.%s" $s $ns) (printf "%s.%s.svc" $s $ns) (printf "%s.%s.svc.%s" $s $ns .Values.clusterDomain) | toJson -}}
{{- end -}}

{{/* What the peers get as --scheduler: every ready replica behind the headless
Service (dns+https://<fullname>-headless.<ns>.svc.<domain>:<grpcPort>, resolved
again every 5 s; each replica dialled by IP, its certificate verified for that
name). The 4th of shoal.schedulerDnsNames. */}}
{{- define "shoal.schedulerReplicasUrl" -}}
{{- printf "dns+%s://%s:%v" (ternary "http" "https" .Values.scheduler.insecurePlaintext) (index (include "shoal.schedulerDnsNames" . | fromJsonArray) 3) .Values.scheduler.grpcPort -}}
{{- end -}}

{{/* A cert-manager csi-driver volume (the driver makes the key on the node,
gets it signed by the issuer and writes ca.crt, tls.crt, tls.key; it renews
in place). Call with (dict "ctx" $ "commonName" … "dnsNames" (list …)
"keyUsages" "…" "fsGroup" gid-or-nil). Attribute names and the variables of
commonName (${POD_NAME}, ${POD_NAMESPACE}, ${POD_UID}, ${SERVICE_ACCOUNT_NAME}):
https://cert-manager.io/docs/usage/csi-driver/. */}}
{{- define "shoal.certManagerCSIVolume" -}}
{{- $c := .ctx.Values.peer.identity.certManagerCSI -}}
csi:
  driver: csi.cert-manager.io
  readOnly: true
  volumeAttributes:
    csi.cert-manager.io/issuer-name: {{ $c.issuer.name | quote }}
    csi.cert-manager.io/issuer-kind: {{ $c.issuer.kind | quote }}
    csi.cert-manager.io/issuer-group: {{ $c.issuer.group | quote }}
    csi.cert-manager.io/common-name: {{ .commonName | quote }}
    csi.cert-manager.io/dns-names: {{ join "," .dnsNames | quote }}
    csi.cert-manager.io/key-usages: {{ .keyUsages | quote }}
    csi.cert-manager.io/key-encoding: PKCS8
    csi.cert-manager.io/duration: {{ $c.duration | quote }}
    {{- with $c.renewBefore }}
    csi.cert-manager.io/renew-before: {{ . | quote }}
    {{- end }}
    {{- if not (kindIs "invalid" .fsGroup) }}
    csi.cert-manager.io/fs-group: {{ .fsGroup | toString | quote }}
    {{- end }}
{{- end -}}

{{/* Refuses combinations of TLS, identity and flag values that cannot work;
prints nothing. Included by the scheduler Deployment. */}}
{{- define "shoal.validateTls" -}}
{{- $v := .Values -}}
{{- $mode := $v.peer.identity.mode -}}
{{- if eq $mode "certManagerCSI" }}
{{- if not $v.peer.identity.certManagerCSI.issuer.name }}
{{- fail "peer.identity.mode=certManagerCSI needs peer.identity.certManagerCSI.issuer.name: the cert-manager Issuer or ClusterIssuer (a CA or Vault issuer) that signs every peer's and the scheduler's certificate" }}
{{- end }}
{{- if $v.peer.tls.existingSecret }}
{{- fail "peer.tls.existingSecret is for peer.identity.mode=shared; with certManagerCSI each peer's certificate comes from cert-manager's csi-driver. Unset one of them" }}
{{- end }}
{{- else if eq $mode "tokenReview" }}
{{- if $v.scheduler.insecurePlaintext }}
{{- fail "peer.identity.mode=tokenReview needs TLS: the issuer serves with the scheduler's certificate; unset scheduler.insecurePlaintext" }}
{{- end }}
{{- if $v.peer.tls.existingSecret }}
{{- fail "peer.tls.existingSecret is for peer.identity.mode=shared; with tokenReview each peer gets its certificate from the scheduler's issuer. Unset one of them" }}
{{- end }}
{{- if ne (not $v.peer.identity.tokenReview.existingCASecret) (not $v.scheduler.tls.existingSecret) }}
{{- fail "peer.identity.mode=tokenReview: set peer.identity.tokenReview.existingCASecret (ca.crt, ca.key: the CA that signs node certificates) and scheduler.tls.existingSecret (a serving certificate from that CA) together, or neither (the chart generates both)" }}
{{- end }}
{{- else if and $v.peer.tls.existingSecret (not $v.scheduler.tls.existingSecret) (not $v.scheduler.insecurePlaintext) }}
{{- fail "peer.tls.existingSecret names certificates from your own CA, which the chart cannot sign the scheduler's certificate with: set scheduler.tls.existingSecret too (ca.crt, tls.crt, tls.key: a server certificate from the same CA for the scheduler Service's names; docs/install.md)" }}
{{- else if and $v.scheduler.tls.existingSecret (not $v.peer.tls.existingSecret) }}
{{- fail "scheduler.tls.existingSecret is set but the peer certificate is generated from a new CA, which your scheduler certificate cannot chain to: set peer.tls.existingSecret too (certificates from the same CA), or neither" }}
{{- end }}
{{- if not $v.scheduler.insecurePlaintext }}
{{- range $v.peer.extraSchedulers }}
{{- if not (hasPrefix "https://" .) }}
{{- fail (printf "peer.extraSchedulers: %q: the scheduler's gRPC is mutual TLS, give an https:// URL (http:// only with scheduler.insecurePlaintext)" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $reserved := dict "--tls-dir" "scheduler.tls" "--insecure-plaintext" "scheduler.insecurePlaintext" "--allow-shared-identity" "peer.identity.mode" "SHOAL_TLS_DIR" "scheduler.tls" "SHOAL_INSECURE_PLAINTEXT" "scheduler.insecurePlaintext" "SHOAL_ALLOW_SHARED_IDENTITY" "peer.identity.mode" "--issuer-ca-dir" "peer.identity.mode" "SHOAL_ISSUER_CA_DIR" "peer.identity.mode" -}}
{{- range $v.scheduler.extraArgs }}
{{- $flag := splitList "=" . | first -}}
{{- if hasKey $reserved $flag }}
{{- fail (printf "scheduler.extraArgs: %s comes from %s; set that instead" $flag (get $reserved $flag)) }}
{{- end }}
{{- end }}
{{- range $v.scheduler.extraEnv }}
{{- if hasKey $reserved (toString .name) }}
{{- fail (printf "scheduler.extraEnv: %s comes from %s; set that instead" .name (get $reserved (toString .name))) }}
{{- end }}
{{- end }}
{{- end -}}
