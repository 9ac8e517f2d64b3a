{{- /*
storageclass-migrate.hook renders a pre-install/pre-upgrade hook that deletes the chart's
PersistentVolumeClaim(s) whose storage class differs from the one the chart now asks for, so that
the same upgrade recreates them with the new class (with the setting data: copy, the hook copies
the data to a volume of the new class and makes the claim again, bound to it; with data: snapshot,
it makes the claim again on the new class from a VolumeSnapshot of the old volume; data: auto
snapshots where it can and copies elsewhere). See the library's README.md.

  {{ include "storageclass-migrate.hook" (dict
       "claim" "data"                                   the claim's name; or
       "claims" (list "data" "logs")                    several claims, one Job; and/or
       "selector" "app.kubernetes.io/instance=x"        a label selector picking (more) claims;
                                                        only claims of this release (Helm's
                                                        meta.helm.sh/release-name and
                                                        release-namespace annotations) are taken;
                                                        or, instead of claims:
       "statefulSet" "db" "template" "data"             a StatefulSet of the chart and the name
                                                        of its volumeClaimTemplate: the hook
                                                        deletes the StatefulSet (orphaning its
                                                        pods and claims) and moves every claim
                                                        <template>-<statefulSet>-<ordinal>; the
                                                        same upgrade creates it again
       "storageClass" .Values.persistence.storageClass  what the claim template asks for: a name;
                                                        "-" for no class; "" or null when the
                                                        template leaves the class out: nothing to
                                                        do (Helm leaves an omitted class alone)
       "name" "data"                                    optional: names the hook's objects (default:
                                                        the claim names, or the StatefulSet's)
       "settings" (dict "inUse" "fail")                 optional: overrides of the settings
       "values" .Values.other                           optional: the settings, if the dependency
                                                        is not aliased storageclassMigrate
       "context" $) }}

Objects (all helm hooks, not part of the release): ServiceAccount, Role, RoleBinding, ClusterRole,
ClusterRoleBinding at weight hookWeight-5 and the Job at hookWeight, each deleted when the hooks
succeed or before the next attempt; a failed Job is kept for inspection.
*/ -}}
{{- define "storageclass-migrate.hook" -}}
{{- $state := dict -}}
{{- $_ := include "storageclass-migrate.resolve" (dict "args" . "out" $state) -}}
{{- if $state.enabled -}}
{{- if $state.rbacCreate }}
{{ include "storageclass-migrate.rbac" $state }}
{{- end }}
{{ include "storageclass-migrate.job" $state }}
{{- end -}}
{{- end -}}

{{- define "storageclass-migrate.rbac" -}}
{{- $rules := fromJson (include "storageclass-migrate.rbacRulesJson" .) -}}
{{- $annotations := include "storageclass-migrate.hookAnnotations" (dict "state" . "weight" .rbacWeight) -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- $annotations | nindent 4 }}
# The pod opts in; nothing else that runs as this account gets its token.
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- $annotations | nindent 4 }}
rules:
{{- include "storageclass-migrate.rules" (dict "rules" $rules.role "state" .) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- $annotations | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ .namespace }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .clusterName | quote }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- $annotations | nindent 4 }}
rules:
{{- include "storageclass-migrate.rules" (dict "rules" $rules.clusterRole "state" .) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .clusterName | quote }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- $annotations | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .clusterName | quote }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ .namespace }}
{{- end -}}

{{- define "storageclass-migrate.job" -}}
{{- $s := .s -}}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "storageclass-migrate.labels" . | nindent 4 }}
  annotations:
    {{- include "storageclass-migrate.hookAnnotations" (dict "state" . "weight" .jobWeight) | nindent 4 }}
    {{- if $s.showLogsOnFailure }}
    helm.sh/hook-output-log-policy: hook-failed
    {{- end }}
spec:
  backoffLimit: {{ int64 $s.backoffLimit }}
  activeDeadlineSeconds: {{ int64 $s.activeDeadlineSeconds }}
  {{- if not (kindIs "invalid" $s.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ int64 $s.ttlSecondsAfterFinished }}
  {{- end }}
  {{- if semverCompare ">=1.26-0" .context.Capabilities.KubeVersion.Version }}
  podFailurePolicy:
    rules:
      # 1: internal error, 2: bad input, 3: refused for safety (nothing changed): a rerun would
      # do the same. 4 (API error, nothing changed), 5 (timed out or stopped before anything
      # changed) and 6 (stopped part-way; a rerun finishes it) count against backoffLimit.
      - action: FailJob
        onExitCodes:
          containerName: migrate
          operator: In
          values: [1, 2, 3]
      # Evicted, preempted or its node drained: not the hook's fault; run it again.
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "storageclass-migrate.labels" . | nindent 8 }}
        {{- with $s.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $s.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccountName }}
      automountServiceAccountToken: true
      enableServiceLinks: false
      restartPolicy: Never
      {{- with $s.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        {{- if not (kindIs "invalid" $s.runAsUser) }}
        runAsUser: {{ int64 $s.runAsUser }}
        {{- end }}
        {{- if not (kindIs "invalid" $s.runAsGroup) }}
        runAsGroup: {{ int64 $s.runAsGroup }}
        {{- end }}
        seccompProfile:
          type: RuntimeDefault
      {{- with .imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: migrate
          image: {{ .image | quote }}
          imagePullPolicy: {{ $s.image.pullPolicy | default "IfNotPresent" }}
          env:
            {{- if .claims }}
            - name: PVC_NAME
              value: {{ join "," .claims | quote }}
            {{- end }}
            {{- if .selector }}
            - name: PVC_SELECTOR
              value: {{ .selector | quote }}
            {{- end }}
            {{- if .statefulSet }}
            - name: STATEFULSET_NAME
              value: {{ .statefulSet | quote }}
            - name: VOLUME_CLAIM_TEMPLATE
              value: {{ .template | quote }}
            {{- end }}
            - name: RELEASE_NAME
              value: {{ .context.Release.Name | quote }}
            - name: PVC_NAMESPACE
              value: {{ .namespace | quote }}
            - name: DESIRED_STORAGECLASS
              value: {{ .storageClass | quote }}
            - name: IN_USE_POLICY
              value: {{ $s.inUse | quote }}
            - name: DELETE_RETAINED_PV
              value: {{ $s.deleteRetainedPV | toString | quote }}
            - name: STRIP_ALL_FINALIZERS
              value: {{ $s.stripAllFinalizers | toString | quote }}
            - name: DATA_POLICY
              value: {{ $s.data | quote }}
            {{- if has $s.data (list "copy" "auto") }}
            - name: COPY_IMAGE
              value: {{ .image | quote }}
            {{- with .imagePullSecrets }}
            - name: COPY_IMAGE_PULL_SECRETS
              value: {{ include "storageclass-migrate.secretNames" . | quote }}
            {{- end }}
            {{- if not (kindIs "invalid" $s.copy.asUser) }}
            - name: COPY_AS_USER
              value: {{ int64 $s.copy.asUser | toString | quote }}
            {{- end }}
            - name: COPY_VERIFY
              value: {{ $s.copy.verify | toString | quote }}
            {{- end }}
            {{- if has $s.data (list "snapshot" "auto") }}
            {{- if not (kindIs "invalid" (index $s.snapshot "class")) }}
            - name: SNAPSHOT_CLASS
              value: {{ index $s.snapshot "class" | quote }}
            {{- end }}
            - name: DELETE_SNAPSHOT
              value: {{ $s.snapshot.deleteSnapshot | toString | quote }}
            {{- end }}
            {{- if has $s.data (list "copy" "snapshot" "auto") }}
            - name: DELETE_OLD_VOLUME
              value: {{ $s.deleteOldVolume | toString | quote }}
            {{- end }}
            - name: DRY_RUN
              value: {{ $s.dryRun | toString | quote }}
            - name: WAIT_TIMEOUT
              value: {{ .timeout | quote }}
            - name: DEADLINE
              value: {{ .deadline | quote }}
            - name: LOG_FORMAT
              value: {{ $s.logFormat | quote }}
            {{- with $s.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $s.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            {{- if not (kindIs "invalid" $s.runAsUser) }}
            runAsUser: {{ int64 $s.runAsUser }}
            {{- end }}
            {{- if not (kindIs "invalid" $s.runAsGroup) }}
            runAsGroup: {{ int64 $s.runAsGroup }}
            {{- end }}
            capabilities:
              drop: [ALL]
            seccompProfile:
              type: RuntimeDefault
          terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}
