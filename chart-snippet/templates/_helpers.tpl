{{- /*
Helpers of the storageclass-migrate library. The entry point, "storageclass-migrate.hook", is in
_hook.tpl; everything here is internal and may change between versions.
*/ -}}

{{- /* A DNS-1123 subdomain, as Kubernetes requires of claim and object names. */ -}}
{{- define "storageclass-migrate.dnsSubdomainPattern" -}}
^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$
{{- end -}}

{{- /*
Seconds between the binary's own deadline (DEADLINE) and the Job's activeDeadlineSeconds.
*/ -}}
{{- define "storageclass-migrate.deadlineMargin" -}}
15
{{- end -}}

{{- /* The duration syntax accepted for the timeout setting (a subset of what the binary parses). */ -}}
{{- define "storageclass-migrate.durationPattern" -}}
^([0-9]+(ms|s|m|h))+$
{{- end -}}

{{- /*
fitName (dict "base" STRING "max" INT): base if it is at most max characters long, else its first
characters and a hash of the whole, so that long names stay distinct.
*/ -}}
{{- define "storageclass-migrate.fitName" -}}
{{- if le (len .base) (int .max) -}}
{{- .base -}}
{{- else -}}
{{- printf "%s-%s" (regexReplaceAll "[-.]+$" (trunc (int (sub .max 9)) .base) "") (sha256sum .base | trunc 8) -}}
{{- end -}}
{{- end -}}

{{- /*
merge (dict "dst" MAP "src" MAP): JSON of dst with src merged in recursively; a value of src,
false, 0, "" and null included, replaces the value of dst (unlike sprig's mergeOverwrite, which
skips such "empty" values).
*/ -}}
{{- define "storageclass-migrate.merge" -}}
{{- $dst := deepCopy (.dst | default dict) -}}
{{- range $key, $value := .src -}}
{{- $old := get $dst $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $old) -}}
{{- $_ := set $dst $key (fromJson (include "storageclass-migrate.merge" (dict "dst" $old "src" $value))) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $dst -}}
{{- end -}}

{{- /* isNumber VALUE: "true" when VALUE is a number of any kind. */ -}}
{{- define "storageclass-migrate.isNumber" -}}
{{- if or (kindIs "int" .) (kindIs "int64" .) (kindIs "float64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
true
{{- end -}}
{{- end -}}

{{- /*
resolve (dict "args" ARGS "out" DICT): checks the arguments of "storageclass-migrate.hook" and the
settings, and fills DICT with everything the object templates need. Fails with a message naming
the setting on any mistake, also for settings that bypassed values.schema.json (the "settings"
and "values" arguments).
*/ -}}
{{- define "storageclass-migrate.resolve" -}}
{{- $args := .args -}}
{{- $out := .out -}}
{{- $p := "storageclass-migrate" -}}
{{- if not (kindIs "map" $args) -}}
{{- fail (printf "%s: call it as include \"storageclass-migrate.hook\" (dict \"claim\" NAME \"storageClass\" CLASS \"context\" $), or with \"statefulSet\" NAME \"template\" NAME instead of \"claim\"" $p) -}}
{{- end -}}
{{- $ctx := get $args "context" -}}
{{- if not $ctx -}}
{{- fail (printf "%s: the argument \"context\" is missing: pass the chart's root context, (dict ... \"context\" $)" $p) -}}
{{- end -}}
{{- range $key, $_ := $args -}}
{{- if not (has $key (list "context" "claim" "claims" "selector" "statefulSet" "template" "storageClass" "name" "settings" "values")) -}}
{{- fail (printf "%s: unknown argument %q (known: context, claim, claims, selector, statefulSet, template, storageClass, name, settings, values)" $p $key) -}}
{{- end -}}
{{- end -}}

{{- /* Settings: the chart's values under the dependency's key, then this call's overrides. */ -}}
{{- $values := get $args "values" -}}
{{- if not $values -}}
{{- if hasKey $ctx.Values "storageclassMigrate" -}}
{{- $values = $ctx.Values.storageclassMigrate -}}
{{- else if hasKey $ctx.Values "storageclass-migrate" -}}
{{- $values = index $ctx.Values "storageclass-migrate" -}}
{{- else -}}
{{- fail (printf "%s: no settings found: declare the dependency with alias storageclassMigrate in Chart.yaml (its defaults then appear under .Values.storageclassMigrate), or pass them as \"values\"" $p) -}}
{{- end -}}
{{- end -}}
{{- if not (kindIs "map" $values) -}}
{{- fail (printf "%s: the settings must be a map, got %s" $p (kindOf $values)) -}}
{{- end -}}
{{- $overrides := get $args "settings" | default dict -}}
{{- if not (kindIs "map" $overrides) -}}
{{- fail (printf "%s: the argument \"settings\" must be a dict, got %s" $p (kindOf $overrides)) -}}
{{- end -}}
{{- $s := fromJson (include "storageclass-migrate.merge" (dict "dst" $values "src" $overrides)) -}}

{{- range $key := list "allowMigration" "deleteRetainedPV" "stripAllFinalizers" "dryRun" "showLogsOnFailure" -}}
{{- if not (kindIs "bool" (get $s $key)) -}}
{{- fail (printf "%s: %s must be true or false, got %v (%s)" $p $key (get $s $key) (kindOf (get $s $key))) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "enabled" $s.allowMigration -}}
{{- $_ = set $out "context" $ctx -}}
{{- $_ = set $out "s" $s -}}

{{- /* The claims. */ -}}
{{- $claims := list -}}
{{- $selector := get $args "selector" | default "" -}}
{{- if hasKey $args "claim" -}}
{{- $claims = append $claims (get $args "claim") -}}
{{- end -}}
{{- if hasKey $args "claims" -}}
{{- if not (kindIs "slice" (get $args "claims")) -}}
{{- fail (printf "%s: the argument \"claims\" must be a list of claim names, e.g. (list \"data\" \"logs\")" $p) -}}
{{- end -}}
{{- $claims = concat $claims (get $args "claims") -}}
{{- end -}}
{{- /* A StatefulSet: its claims are <template>-<statefulSet>-<ordinal>, found by the binary. */ -}}
{{- $statefulSet := get $args "statefulSet" | default "" -}}
{{- $template := get $args "template" | default "" -}}
{{- if $statefulSet -}}
{{- if or $claims $selector -}}
{{- fail (printf "%s: \"statefulSet\" finds the claims by its template: leave \"claim\", \"claims\" and \"selector\" out" $p) -}}
{{- end -}}
{{- range $what, $value := dict "statefulSet" $statefulSet "template" $template -}}
{{- if not (and (kindIs "string" $value) (regexMatch (include "storageclass-migrate.dnsSubdomainPattern" dict) $value) (le (len $value) 63) (not (contains "." $value))) -}}
{{- fail (printf "%s: \"%s\" %q is not a valid name (lowercase letters, digits and '-', at most 63 characters); \"template\" names the volumeClaimTemplate, which the hook needs to find the claims again once the StatefulSet is gone" $p $what (toString $value)) -}}
{{- end -}}
{{- end -}}
{{- else if $template -}}
{{- fail (printf "%s: \"template\" goes with \"statefulSet\"" $p) -}}
{{- end -}}
{{- $_ = set $out "statefulSet" $statefulSet -}}
{{- $_ = set $out "template" $template -}}
{{- if not (or $claims $selector $statefulSet) -}}
{{- fail (printf "%s: no claim given: pass \"claim\" NAME, \"claims\" (list NAME ...), \"selector\" LABEL-SELECTOR, or \"statefulSet\" NAME \"template\" NAME" $p) -}}
{{- end -}}
{{- if not (kindIs "string" $selector) -}}
{{- fail (printf "%s: the argument \"selector\" must be a label selector string such as \"app=db\"" $p) -}}
{{- end -}}
{{- range $claims -}}
{{- if not (and (kindIs "string" .) (regexMatch (include "storageclass-migrate.dnsSubdomainPattern" dict) .) (le (len .) 253)) -}}
{{- fail (printf "%s: %q is not a valid claim name (lowercase letters, digits, '-' and '.', at most 253 characters)" $p (toString .)) -}}
{{- end -}}
{{- end -}}
{{- $claims = uniq $claims -}}
{{- $_ = set $out "claims" $claims -}}
{{- $_ = set $out "selector" $selector -}}

{{- /*
The desired class, in the chart's own convention: a name; "-" for no class (storageClassName: "");
"" or null when the claim template leaves storageClassName out. Helm never changes a field that
both manifests omit, so the binary takes "" as nothing to do: the claim keeps whatever class it
got, even when the cluster's default class changes. To move claims to the default class, name it.
*/ -}}
{{- $class := get $args "storageClass" -}}
{{- if kindIs "invalid" $class -}}
{{- $class = "" -}}
{{- end -}}
{{- if not (kindIs "string" $class) -}}
{{- fail (printf "%s: \"storageClass\" must be a string (a class name; \"-\" for no class; \"\" when the claim template leaves the class out, which the hook leaves alone), got %v" $p $class) -}}
{{- end -}}
{{- $_ = set $out "storageClass" $class -}}

{{- /* Names. Namespaced objects share one name; cluster-scoped ones carry namespace and release. */ -}}
{{- $id := get $args "name" | default "" -}}
{{- if not $id -}}
{{- if $claims -}}
{{- $id = join "-" $claims -}}
{{- else if $statefulSet -}}
{{- $id = $statefulSet -}}
{{- else -}}
{{- $id = printf "selector-%s" (sha256sum $selector | trunc 8) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch (include "storageclass-migrate.dnsSubdomainPattern" dict) $id) -}}
{{- fail (printf "%s: \"name\" %q must be lowercase letters, digits, '-' and '.'" $p $id) -}}
{{- end -}}
{{- $release := $ctx.Release.Name -}}
{{- $namespace := $ctx.Release.Namespace -}}
{{- $_ = set $out "id" $id -}}
{{- $_ = set $out "namespace" $namespace -}}
{{- /* "<release>-<id>", or just the id when it already starts with the release name (rel-data). */ -}}
{{- $base := printf "%s-%s" $release $id -}}
{{- if or (eq $id $release) (hasPrefix (printf "%s-" $release) $id) -}}
{{- $base = $id -}}
{{- end -}}
{{- $_ = set $out "name" (include "storageclass-migrate.fitName" (dict "base" (printf "%s-storageclass-migrate" $base) "max" 63)) -}}
{{- $_ = set $out "clusterName" (include "storageclass-migrate.fitName" (dict "base" (printf "storageclass-migrate:%s:%s:%s" $namespace $release $id) "max" 253)) -}}

{{- /* Policies. */ -}}
{{- if not (has $s.inUse (list "evict" "force" "fail")) -}}
{{- fail (printf "%s: inUse must be one of evict, force, fail; got %v" $p $s.inUse) -}}
{{- end -}}
{{- if not (has $s.logFormat (list "json" "text")) -}}
{{- fail (printf "%s: logFormat must be json or text; got %v" $p $s.logFormat) -}}
{{- end -}}
{{- $timeoutMs := 0 -}}
{{- $timeout := "" -}}
{{- if include "storageclass-migrate.isNumber" $s.timeout -}}
{{- if lt (float64 $s.timeout) 1.0 -}}
{{- fail (printf "%s: timeout must be positive, e.g. 60s or 2m; got %v" $p $s.timeout) -}}
{{- end -}}
{{- $timeoutMs = mul (int64 $s.timeout) 1000 -}}
{{- $timeout = printf "%ds" (int64 $s.timeout) -}}
{{- else if and (kindIs "string" $s.timeout) (regexMatch (include "storageclass-migrate.durationPattern" dict) $s.timeout) -}}
{{- $unit := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" $s.timeout -1 -}}
{{- $timeoutMs = add $timeoutMs (mul (regexFind "^[0-9]+" . | int64) (get $unit (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $timeout = $s.timeout -}}
{{- else -}}
{{- fail (printf "%s: timeout must be a positive duration such as 60s, 2m or 1m30s, or a number of seconds; got %v" $p $s.timeout) -}}
{{- end -}}
{{- if eq (int64 $timeoutMs) 0 -}}
{{- fail (printf "%s: timeout must be positive, e.g. 60s or 2m; got %v" $p $s.timeout) -}}
{{- end -}}
{{- $_ = set $out "timeout" $timeout -}}
{{- /*
The data. copy, snapshot and auto keep the old volume (Retain) until the claim is bound to a new
volume holding its data, which stripAllFinalizers (the hook deletes the volume) and
deleteRetainedPV (its provisioner does) would undo; the binary refuses the combination too, but
only once the Job runs. copy's settings apply to copy and auto, snapshot's to snapshot and auto.
*/ -}}
{{- if not (has $s.data (list "delete" "copy" "snapshot" "auto")) -}}
{{- fail (printf "%s: data must be delete, copy, snapshot or auto; got %v" $p $s.data) -}}
{{- end -}}
{{- if and (kindIs "map" $s.copy) (hasKey $s.copy "deleteOldVolume") -}}
{{- fail (printf "%s: copy.deleteOldVolume has moved to deleteOldVolume, which applies to data: copy, snapshot and auto alike; set deleteOldVolume: %v instead and remove copy.deleteOldVolume" $p (index $s.copy "deleteOldVolume")) -}}
{{- end -}}
{{- if ne $s.data "delete" -}}
{{- $conflicts := list -}}
{{- if $s.stripAllFinalizers -}}
{{- $conflicts = append $conflicts "stripAllFinalizers" -}}
{{- end -}}
{{- if $s.deleteRetainedPV -}}
{{- $conflicts = append $conflicts "deleteRetainedPV" -}}
{{- end -}}
{{- if $conflicts -}}
{{- fail (printf "%s: data: copy, snapshot and auto keep the old volume until the claim is bound to a new volume holding its data, so data: %s cannot be combined with %s, which would delete that volume; set %s false (deleteOldVolume lets the old volume go once the claim is bound to the new volume)" $p $s.data (join " or " $conflicts) (join " and " $conflicts)) -}}
{{- end -}}
{{- if not (kindIs "bool" (get $s "deleteOldVolume")) -}}
{{- fail (printf "%s: deleteOldVolume must be true or false, got %v (%s)" $p (get $s "deleteOldVolume") (kindOf (get $s "deleteOldVolume"))) -}}
{{- end -}}
{{- end -}}
{{- if has $s.data (list "copy" "auto") -}}
{{- if not (kindIs "map" $s.copy) -}}
{{- fail (printf "%s: copy must be a map (asUser, verify); got %v" $p $s.copy) -}}
{{- end -}}
{{- if not (kindIs "bool" (get $s.copy "verify")) -}}
{{- fail (printf "%s: copy.verify must be true or false, got %v (%s)" $p (get $s.copy "verify") (kindOf (get $s.copy "verify"))) -}}
{{- end -}}
{{- /* index, not get: a null that helm dropped from the values reads as null, not "". */ -}}
{{- $asUser := index $s.copy "asUser" -}}
{{- if not (kindIs "invalid" $asUser) -}}
{{- if not (and (include "storageclass-migrate.isNumber" $asUser) (eq (float64 (int64 $asUser)) (float64 $asUser)) (ge (int64 $asUser) 1) (le (int64 $asUser) 2147483647)) -}}
{{- fail (printf "%s: copy.asUser must be a uid from 1 to 2147483647, or null (root with CHOWN, DAC_OVERRIDE, FOWNER and FSETID); got %v" $p $asUser) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if has $s.data (list "snapshot" "auto") -}}
{{- if not (kindIs "map" $s.snapshot) -}}
{{- fail (printf "%s: snapshot must be a map (class, deleteSnapshot); got %v" $p $s.snapshot) -}}
{{- end -}}
{{- if not (kindIs "bool" (get $s.snapshot "deleteSnapshot")) -}}
{{- fail (printf "%s: snapshot.deleteSnapshot must be true or false, got %v (%s)" $p (get $s.snapshot "deleteSnapshot") (kindOf (get $s.snapshot "deleteSnapshot"))) -}}
{{- end -}}
{{- $snapshotClass := index $s.snapshot "class" -}}
{{- if not (kindIs "invalid" $snapshotClass) -}}
{{- if not (and (kindIs "string" $snapshotClass) (regexMatch (include "storageclass-migrate.dnsSubdomainPattern" dict) $snapshotClass) (le (len $snapshotClass) 253)) -}}
{{- fail (printf "%s: snapshot.class must name a VolumeSnapshotClass (lowercase letters, digits, '-' and '.', at most 253 characters), or be null for the default class of the volume's driver; got %v" $p $snapshotClass) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key := list "activeDeadlineSeconds" "backoffLimit" "hookWeight" -}}
{{- if not (include "storageclass-migrate.isNumber" (get $s $key)) -}}
{{- fail (printf "%s: %s must be a number; got %v" $p $key (get $s $key)) -}}
{{- end -}}
{{- end -}}
{{- /*
One deadline for the run: the binary stops at DEADLINE and reports what it did and what is left,
deadlineMargin seconds before the Job's activeDeadlineSeconds would kill the pod without a
summary (the margin covers the pod's start, which counts against activeDeadlineSeconds, and the
report). The deadline must leave room for the two waits of one claim (claim gone, volume gone).
*/ -}}
{{- $margin := int64 (include "storageclass-migrate.deadlineMargin" dict) -}}
{{- $deadline := sub (int64 $s.activeDeadlineSeconds) $margin -}}
{{- if le (mul $deadline 1000) (mul $timeoutMs 2) -}}
{{- fail (printf "%s: the run's deadline, activeDeadlineSeconds (%d) minus %ds for the pod's start and the report, must exceed twice the timeout (%s: one wait for the claim, one for its volume); raise activeDeadlineSeconds above %d or lower timeout, and keep activeDeadlineSeconds below helm's --timeout (300s by default)" $p (int64 $s.activeDeadlineSeconds) $margin $timeout (add $margin (div (mul $timeoutMs 2) 1000))) -}}
{{- end -}}
{{- $_ = set $out "deadline" (printf "%ds" $deadline) -}}
{{- if lt (int64 $s.backoffLimit) 0 -}}
{{- fail (printf "%s: backoffLimit must not be negative; got %v" $p $s.backoffLimit) -}}
{{- end -}}

{{- /* Image, service account. */ -}}
{{- if not (and (kindIs "map" $s.image) $s.image.repository) -}}
{{- fail (printf "%s: image.repository must be set" $p) -}}
{{- end -}}
{{- $image := $s.image.repository -}}
{{- if $s.image.tag -}}
{{- $image = printf "%s:%s" $image $s.image.tag -}}
{{- end -}}
{{- if $s.image.digest -}}
{{- $image = printf "%s@%s" $image $s.image.digest -}}
{{- end -}}
{{- $_ = set $out "image" $image -}}
{{- $rbacCreate := true -}}
{{- if and (kindIs "map" $s.rbac) (hasKey $s.rbac "create") -}}
{{- $rbacCreate = $s.rbac.create -}}
{{- end -}}
{{- $_ = set $out "rbacCreate" $rbacCreate -}}
{{- if $rbacCreate -}}
{{- $_ = set $out "serviceAccountName" $out.name -}}
{{- else if $s.serviceAccountName -}}
{{- $_ = set $out "serviceAccountName" $s.serviceAccountName -}}
{{- else -}}
{{- fail (printf "%s: with rbac.create false, set serviceAccountName to an account that holds the rules of rbac-rules.json" $p) -}}
{{- end -}}
{{- $pullSecrets := list -}}
{{- range $s.imagePullSecrets -}}
{{- if kindIs "string" . -}}
{{- $pullSecrets = append $pullSecrets (dict "name" .) -}}
{{- else -}}
{{- $pullSecrets = append $pullSecrets (dict "name" .name) -}}
{{- end -}}
{{- end -}}
{{- $_ = set $out "imagePullSecrets" $pullSecrets -}}
{{- $_ = set $out "rbacWeight" (sub (int64 $s.hookWeight) 5) -}}
{{- $_ = set $out "jobWeight" (int64 $s.hookWeight) -}}
{{- end -}}

{{- /* secretNames LIST: the names of a list of {name: ...}, joined by commas. */ -}}
{{- define "storageclass-migrate.secretNames" -}}
{{- $names := list -}}
{{- range . -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{- /* labels STATE: labels of every object of the hook. */ -}}
{{- define "storageclass-migrate.labels" -}}
app.kubernetes.io/name: storageclass-migrate
app.kubernetes.io/instance: {{ .context.Release.Name | quote }}
app.kubernetes.io/component: {{ include "storageclass-migrate.fitName" (dict "base" .id "max" 63) | quote }}
app.kubernetes.io/part-of: {{ .context.Chart.Name | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{- /* hookAnnotations (dict "state" STATE "weight" INT): the helm hook annotations. */ -}}
{{- define "storageclass-migrate.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | toString | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{- /*
rules (dict "rules" LIST "state" STATE): the RBAC rules of rbac-rules.json that the settings need.
"when":
  always              every setting
  inUseEvict          inUse is evict (evictions, and the PodDisruptionBudgets checked first)
  patchClaims         inUse is force, or stripAllFinalizers (finalizer patches of the claim)
  writeVolumes        deleteRetainedPV or stripAllFinalizers (the volume's mark, reclaim policy
                      and finalizer patches)
  stripAllFinalizers  stripAllFinalizers (the volume is deleted by the hook, not its provisioner)
  keepData            data is copy, snapshot or auto: what both ways of keeping the data share
                      (the temporary claims and the claim made again, whose names are not all
                      known here; the volumes' reclaim policy, claimRef and annotation patches)
  dataCopy            data is copy or auto (the copy Job; the copy pod's dry run)
  dataSnapshot        data is snapshot or auto (the VolumeSnapshot of the old volume, made, read
                      and watched until ready to use; the VolumeSnapshotClasses, read to find
                      the driver's)
  deleteSnapshot      data is snapshot or auto, and snapshot.deleteSnapshot (the VolumeSnapshot
                      deleted once the claim made again is bound)
  statefulSet         a StatefulSet is given (its read, the wait for it to go, its delete)
"limitToClaimNames": the rule names the claims when they are given by name only (a selector, or a
StatefulSet's ordinals, name claims unknown here); "limitToNamespace": the rule names the release's
namespace; "limitToStatefulSetName": the rule names the StatefulSet.
*/ -}}
{{- define "storageclass-migrate.rules" -}}
{{- $state := .state -}}
{{- range $rule := .rules -}}
{{- range $key, $_ := $rule -}}
{{- if not (has $key (list "when" "apiGroups" "resources" "verbs" "limitToClaimNames" "limitToNamespace" "limitToStatefulSetName")) -}}
{{- fail (printf "storageclass-migrate: rbac-rules.json: unknown key %q in a rule" $key) -}}
{{- end -}}
{{- end -}}
{{- $when := get $rule "when" -}}
{{- $on := false -}}
{{- if eq $when "always" -}}
{{- $on = true -}}
{{- else if eq $when "inUseEvict" -}}
{{- $on = eq $state.s.inUse "evict" -}}
{{- else if eq $when "patchClaims" -}}
{{- $on = or (eq $state.s.inUse "force") $state.s.stripAllFinalizers -}}
{{- else if eq $when "writeVolumes" -}}
{{- $on = or $state.s.deleteRetainedPV $state.s.stripAllFinalizers -}}
{{- else if eq $when "stripAllFinalizers" -}}
{{- $on = $state.s.stripAllFinalizers -}}
{{- else if eq $when "keepData" -}}
{{- $on = has $state.s.data (list "copy" "snapshot" "auto") -}}
{{- else if eq $when "dataCopy" -}}
{{- $on = has $state.s.data (list "copy" "auto") -}}
{{- else if eq $when "dataSnapshot" -}}
{{- $on = has $state.s.data (list "snapshot" "auto") -}}
{{- else if eq $when "deleteSnapshot" -}}
{{- if has $state.s.data (list "snapshot" "auto") -}}
{{- $on = $state.s.snapshot.deleteSnapshot -}}
{{- end -}}
{{- else if eq $when "statefulSet" -}}
{{- $on = not (empty $state.statefulSet) -}}
{{- else -}}
{{- fail (printf "storageclass-migrate: rbac-rules.json: unknown \"when\" %q" $when) -}}
{{- end -}}
{{- if $on }}
- apiGroups: {{ toJson $rule.apiGroups }}
  resources: {{ toJson $rule.resources }}
  verbs: {{ toJson $rule.verbs }}
{{- $limits := 0 -}}
{{- range $limit := list "limitToClaimNames" "limitToNamespace" "limitToStatefulSetName" -}}
{{- if get $rule $limit -}}
{{- $limits = add1 $limits -}}
{{- end -}}
{{- end -}}
{{- if gt $limits 1 -}}
{{- fail "storageclass-migrate: rbac-rules.json: a rule can have only one of limitToClaimNames, limitToNamespace and limitToStatefulSetName" -}}
{{- end -}}
{{- if and (get $rule "limitToClaimNames") $state.claims (not $state.selector) }}
  resourceNames: {{ toJson $state.claims }}
{{- else if get $rule "limitToNamespace" }}
  resourceNames: {{ list $state.namespace | toJson }}
{{- else if get $rule "limitToStatefulSetName" }}
  resourceNames: {{ list $state.statefulSet | toJson }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}
