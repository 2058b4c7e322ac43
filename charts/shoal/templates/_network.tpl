{{/*
Address families (values: ipFamilies, ipFamilyPolicy; docs/install.md "IPv6 and
dual stack").

shoal.anyAddress: what every listener that is not loopback-only binds (the
peers' QUIC and HTTP, the scheduler's gRPC, HTTP and issuer): [::], dual-stack
where the node allows (the binaries fall back to 0.0.0.0 on their own where
IPv6 is off), or 0.0.0.0 when ipFamilies is [IPv4] alone.
*/}}
{{- define "shoal.anyAddress" -}}
{{- if eq (toJson .Values.ipFamilies) (toJson (list "IPv4")) -}}
0.0.0.0
{{- else -}}
[::]
{{- end -}}
{{- end -}}

{{/*
shoal.serviceIPFamilies: a Service's ipFamilyPolicy and ipFamilies (nothing
when both values are unset: the cluster's default). The policy defaults to
SingleStack for one family and PreferDualStack for two.
*/}}
{{- define "shoal.serviceIPFamilies" -}}
{{- $families := .Values.ipFamilies | default list -}}
{{- $policy := .Values.ipFamilyPolicy -}}
{{- if and (eq $policy "SingleStack") (gt (len $families) 1) -}}
{{- fail (printf "ipFamilyPolicy SingleStack takes one family, ipFamilies lists %d (%s): use PreferDualStack or RequireDualStack" (len $families) (join ", " $families)) -}}
{{- end -}}
{{- if and (eq $policy "RequireDualStack") (eq (len $families) 1) -}}
{{- fail (printf "ipFamilyPolicy RequireDualStack needs both families, ipFamilies lists only %s" (first $families)) -}}
{{- end -}}
{{- if not $policy -}}
{{- if eq (len $families) 1 -}}{{- $policy = "SingleStack" -}}
{{- else if gt (len $families) 1 -}}{{- $policy = "PreferDualStack" -}}
{{- end -}}
{{- end -}}
{{- with $policy }}
ipFamilyPolicy: {{ . }}
{{- end }}
{{- with $families }}
ipFamilies:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
