{{- /*
Names, labels and the numbers several templates share. The termination timing is
computed here once, so that the Deployment and the autoscaler cannot disagree.
*/ -}}

{{- define "baton.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The release's objects: "<release>" if it already says baton, else "<release>-baton". */ -}}
{{- define "baton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "baton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "baton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "baton.labels" -}}
{{ include "baton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "baton.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- /*
How long Kubernetes lets a pod stop before SIGKILL. The preStop hook sleeps
loadBalancer.deregistrationSeconds, then drains for at most drain.windowSeconds
(BATON_DRAIN_LB_DELAY is inside the window), then baton takes a few seconds to
leave the cluster and close its pool:
  terminationGracePeriodSeconds = deregistrationSeconds + windowSeconds + terminationMarginSeconds
*/ -}}
{{- define "baton.terminationGracePeriodSeconds" -}}
{{- $v := .Values -}}
{{- if gt (int $v.drain.lbDelaySeconds | mul 2) (int $v.drain.windowSeconds) -}}
{{- fail (printf "drain.lbDelaySeconds (%v) is more than half of drain.windowSeconds (%v): baton would cut it to half the window" $v.drain.lbDelaySeconds $v.drain.windowSeconds) -}}
{{- end -}}
{{- add (int $v.loadBalancer.deregistrationSeconds) (int $v.drain.windowSeconds) (int $v.terminationMarginSeconds) -}}
{{- end -}}
