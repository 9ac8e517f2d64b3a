//! ServiceAccounts with RBAC rules (the chart's, from `chart-snippet/rbac-rules.json`, or any),
//! their tokens, and kubeconfigs that authenticate with a token.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    authorization::v1::SubjectAccessReview,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use kube::{Api, Client, api::PostParams};
use serde_json::{Value, json};

use crate::{
    TestNamespace,
    api::{WAIT_TIMEOUT, create, from_json},
    control_plane::{apiserver_url, ca_path, client_for, repo_root},
};

/// `PolicyRule` from its parts, e.g. `rule(&[""], &["persistentvolumeclaims"], &["get"])`.
pub fn rule(api_groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    from_json(json!({"apiGroups": api_groups, "resources": resources, "verbs": verbs}))
}

/// Every verb on every resource.
pub fn everything() -> PolicyRule {
    rule(&["*"], &["*"], &["*"])
}

/// The hook's Role and ClusterRole rules, read from chart-snippet/rbac-rules.json and rendered as
/// the chart renders them for claims given by name: the rules whose `when` is in `when`,
/// `limitToClaimNames` as resourceNames of `claims`, `limitToNamespace` as resourceNames of
/// `namespace`; with `without` (resource, verb), that verb removed. Fails on any key or `when`
/// it does not know, so the file cannot grow a rule the tests would not grant.
pub fn chart_rules(
    claims: &[&str],
    namespace: &str,
    when: &[&str],
    without: Option<(&str, &str)>,
) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    rules_for(Scope::Claims(claims), namespace, when, without)
}

/// The hook's rules as the chart renders them for StatefulSet `set` (the `statefulSet` argument
/// of the include): the rules whose `when` is `statefulSet` or in `when`,
/// `limitToStatefulSetName` as resourceNames of `set`, and `limitToClaimNames` without names
/// (the claims of every ordinal, also those a scale-down left, cannot be listed in advance).
pub fn statefulset_chart_rules(
    set: &str,
    namespace: &str,
    when: &[&str],
    without: Option<(&str, &str)>,
) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let mut when = when.to_vec();
    when.push("statefulSet");
    rules_for(Scope::StatefulSet(set), namespace, &when, without)
}

/// Which objects the hook is given.
#[derive(Clone, Copy, Debug)]
enum Scope<'a> {
    Claims(&'a [&'a str]),
    StatefulSet(&'a str),
}

fn rules_for(
    scope: Scope<'_>,
    namespace: &str,
    when: &[&str],
    without: Option<(&str, &str)>,
) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let path = repo_root().join("chart-snippet/rbac-rules.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("parsing rbac-rules.json");
    let keys = doc.as_object().expect("an object").keys();
    assert!(
        keys.clone().all(|k| k == "role" || k == "clusterRole"),
        "{:?}",
        keys.collect::<Vec<_>>()
    );
    let mut removed = false;
    let mut pick = |key: &str| -> Vec<PolicyRule> {
        doc[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not a list"))
            .iter()
            .filter_map(|r| {
                let entry = r.as_object().expect("a rule object");
                for k in entry.keys() {
                    assert!(
                        [
                            "when",
                            "apiGroups",
                            "resources",
                            "verbs",
                            "limitToClaimNames",
                            "limitToNamespace",
                            "limitToStatefulSetName"
                        ]
                        .contains(&k.as_str()),
                        "unknown key {k} in {r}"
                    );
                }
                let set = r["when"].as_str().expect("when");
                assert!(
                    [
                        "always",
                        "inUseEvict",
                        "patchClaims",
                        "writeVolumes",
                        "stripAllFinalizers",
                        "keepData",
                        "dataCopy",
                        "dataSnapshot",
                        "deleteSnapshot",
                        "statefulSet"
                    ]
                    .contains(&set),
                    "unknown when {set}"
                );
                if !when.contains(&set) {
                    return None;
                }
                let mut verbs: Vec<Value> = r["verbs"].as_array().expect("verbs").clone();
                if let Some((resource, verb)) = without
                    && r["resources"]
                        .as_array()
                        .expect("resources")
                        .iter()
                        .any(|x| x == resource)
                {
                    let before = verbs.len();
                    verbs.retain(|v| v != verb);
                    removed |= verbs.len() < before;
                    if verbs.is_empty() {
                        return None;
                    }
                }
                let mut rule = json!({
                    "apiGroups": r["apiGroups"], "resources": r["resources"], "verbs": verbs,
                });
                let limits = [
                    "limitToClaimNames",
                    "limitToNamespace",
                    "limitToStatefulSetName",
                ]
                .map(|k| r[k].as_bool() == Some(true));
                match (limits, scope) {
                    ([true, false, false], Scope::Claims(claims)) => {
                        rule["resourceNames"] = json!(claims)
                    }
                    ([true, false, false], Scope::StatefulSet(_)) => {}
                    ([false, true, false], _) => rule["resourceNames"] = json!([namespace]),
                    ([false, false, true], Scope::StatefulSet(set)) => {
                        rule["resourceNames"] = json!([set])
                    }
                    ([false, false, true], Scope::Claims(_)) => {
                        panic!("a StatefulSet rule without a StatefulSet: {r}")
                    }
                    ([false, false, false], _) => {}
                    _ => panic!("two limits on one rule: {r}"),
                }
                Some(from_json(rule))
            })
            .collect()
    };
    let rules = (pick("role"), pick("clusterRole"));
    assert!(
        without.is_none() || removed,
        "{without:?} is not in the rules"
    );
    rules
}

/// A ServiceAccount with a token and a kubeconfig that authenticates as it.
#[derive(Debug)]
pub struct ServiceAccountAccess {
    pub namespace: String,
    pub name: String,
    /// `system:serviceaccount:<namespace>:<name>`
    pub username: String,
    pub token: String,
    /// Kubeconfig with the token (server and CA of the control plane), context `local`.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceAccountAccess {
    /// A client authenticating as the ServiceAccount.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }
}

/// A ServiceAccount with a Role (in the namespace) and a ClusterRole (named
/// `<namespace>-<name>`) bound to it, each only if it has rules.
#[derive(Clone, Debug)]
pub struct Account {
    name: String,
    role: Vec<PolicyRule>,
    cluster_role: Vec<PolicyRule>,
}

impl Account {
    pub fn new(name: &str) -> Account {
        Account {
            name: name.into(),
            role: vec![],
            cluster_role: vec![],
        }
    }

    pub fn role(mut self, rules: &[PolicyRule]) -> Account {
        self.role.extend_from_slice(rules);
        self
    }

    pub fn cluster_role(mut self, rules: &[PolicyRule]) -> Account {
        self.cluster_role.extend_from_slice(rules);
        self
    }

    /// Allowed everything (through its ClusterRole).
    pub fn admin(self) -> Account {
        self.cluster_role(&[everything()])
    }

    /// The chart's rules for the hook of `claims` in `namespace` (see [`chart_rules`]).
    pub fn chart(
        self,
        claims: &[&str],
        namespace: &str,
        when: &[&str],
        without: Option<(&str, &str)>,
    ) -> Account {
        let (role, cluster_role) = chart_rules(claims, namespace, when, without);
        self.role(&role).cluster_role(&cluster_role)
    }

    /// The chart's rules for the hook of StatefulSet `set` in `namespace` (see
    /// [`statefulset_chart_rules`]).
    pub fn chart_statefulset(
        self,
        set: &str,
        namespace: &str,
        when: &[&str],
        without: Option<(&str, &str)>,
    ) -> Account {
        let (role, cluster_role) = statefulset_chart_rules(set, namespace, when, without);
        self.role(&role).cluster_role(&cluster_role)
    }

    /// Creates the ServiceAccount, its roles and bindings, and a token from the TokenRequest API
    /// (1 h). Returns once RBAC allows the first rule of each role, so that a request made next
    /// is authorised.
    pub async fn create(&self, ns: &TestNamespace) -> ServiceAccountAccess {
        let client = ns.client();
        let (namespace, name) = (ns.name(), self.name.as_str());
        let sa: ServiceAccount = from_json(json!({"metadata": {"name": name}}));
        create(&Api::namespaced(client.clone(), namespace), &sa).await;
        let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": namespace}]);
        let binding = |kind: &str, name: &str, labels: &Value| {
            json!({
                "metadata": {"name": name, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": subject,
            })
        };
        if !self.role.is_empty() {
            let role: Role = from_json(json!({"metadata": {"name": name}, "rules": self.role}));
            create(&Api::namespaced(client.clone(), namespace), &role).await;
            let b: RoleBinding = from_json(binding("Role", name, &json!({})));
            create(&Api::namespaced(client.clone(), namespace), &b).await;
        }
        if !self.cluster_role.is_empty() {
            let cname = ns.scoped(name);
            let labels = json!(ns.owner_labels());
            let role: ClusterRole = from_json(json!({
                "metadata": {"name": cname, "labels": labels}, "rules": self.cluster_role
            }));
            create(&Api::all(client.clone()), &role).await;
            let b: ClusterRoleBinding = from_json(binding("ClusterRole", &cname, &labels));
            create(&Api::all(client.clone()), &b).await;
        }
        let username = format!("system:serviceaccount:{namespace}:{name}");
        // The apiserver's RBAC authoriser works from a cache; wait until it has the new bindings.
        for (r, ns_of_rule) in [
            (self.role.first(), Some(namespace)),
            (self.cluster_role.first(), None),
        ] {
            if let Some(r) = r {
                let allowed =
                    wait_authorized(client, namespace, name, r, ns_of_rule, WAIT_TIMEOUT).await;
                assert!(allowed, "RBAC never allowed {username} {r:?}");
            }
        }
        let token = request_token(client, namespace, name, json!({"expirationSeconds": 3600}))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("storageclass-migrate-sa-")
            .tempdir()
            .expect("temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        write_token_kubeconfig(
            &kubeconfig,
            apiserver_url(),
            Some(ca_path()),
            &token,
            namespace,
        );
        ServiceAccountAccess {
            namespace: namespace.to_string(),
            name: name.to_string(),
            username,
            token,
            kubeconfig,
            _dir: dir,
        }
    }
}

/// A token of ServiceAccount `name` from the TokenRequest API with the given `spec`.
pub async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
    mut spec: Value,
) -> Result<String, String> {
    if spec.get("audiences").is_none() {
        spec["audiences"] = json!([]);
    }
    let request: TokenRequest = from_json(json!({ "spec": spec }));
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for {namespace}/{name}: {e}"))?
        .status
        .ok_or("TokenRequest without status")?
        .token)
}

/// Writes a kubeconfig for `server` that authenticates with a bearer token, trusting the CA in
/// the file `ca` (embedded), context `local` in `namespace`.
pub fn write_token_kubeconfig(
    path: &Path,
    server: &str,
    ca: Option<&Path>,
    token: &str,
    namespace: &str,
) {
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca {
        let data = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        cluster["certificate-authority-data"] = json!(base64(&data));
    }
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {
            "cluster": "local", "user": "user", "namespace": namespace,
        }}],
        "current-context": "local",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Polls SubjectAccessReview (there is nothing to watch) until ServiceAccount `sa` of
/// `sa_namespace` may use the first verb and resource of `rule` (in `namespace`, or cluster-wide
/// for `None`); false if it still may not after `timeout`.
pub async fn wait_authorized(
    client: &Client,
    sa_namespace: &str,
    sa: &str,
    rule: &PolicyRule,
    namespace: Option<&str>,
    timeout: Duration,
) -> bool {
    let (Some(resource), Some(verb)) = (
        rule.resources.as_ref().and_then(|r| r.first()),
        rule.verbs.first(),
    ) else {
        return true;
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource.as_str(), None),
    };
    let group = rule
        .api_groups
        .as_ref()
        .and_then(|g| g.first())
        .cloned()
        .unwrap_or_default();
    let name = rule.resource_names.as_ref().and_then(|n| n.first());
    let review: SubjectAccessReview = from_json(json!({"spec": {
        "user": format!("system:serviceaccount:{sa_namespace}:{sa}"),
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_namespace}"), "system:authenticated"],
        "resourceAttributes": {
            "namespace": namespace, "verb": verb, "group": group,
            "resource": resource, "subresource": subresource, "name": name,
        }
    }}));
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Ok(r) = api.create(&PostParams::default(), &review).await
            && r.status.is_some_and(|s| s.allowed)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn chart_rules_limit_claims_and_remove_a_verb() {
        let (role, _) = chart_rules(&["data"], "apps", &["always"], None);
        assert!(
            role.iter()
                .any(|r| r.resource_names.as_deref() == Some(&["data".to_string()][..])),
            "{role:?}"
        );
        let (role, _) = chart_rules(
            &["data"],
            "apps",
            &["always"],
            Some(("persistentvolumeclaims", "delete")),
        );
        assert!(
            !role.iter().any(|r| r
                .resources
                .as_ref()
                .is_some_and(|res| res.contains(&"persistentvolumeclaims".to_string()))
                && r.verbs.contains(&"delete".to_string())),
            "{role:?}"
        );
    }

    /// Whether `rules` grant `verb` on `resource`, with resourceNames (`named`) or without.
    fn grants(rules: &[PolicyRule], resource: &str, verb: &str, named: bool) -> bool {
        rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
                && r.resource_names.is_some() == named
        })
    }

    #[test]
    fn chart_rules_grant_the_copy_with_keep_data_and_data_copy() {
        let (role, cluster) = chart_rules(&["data"], "apps", &["always"], None);
        assert!(!grants(&role, "jobs", "create", false), "{role:?}");
        assert!(
            !grants(&cluster, "persistentvolumes", "patch", false),
            "{cluster:?}"
        );
        // dataCopy alone: the copy Job and pod, not the claims and volumes both strategies use.
        let (role, cluster) = chart_rules(&["data"], "apps", &["always", "dataCopy"], None);
        assert!(grants(&role, "jobs", "delete", false), "{role:?}");
        assert!(grants(&role, "pods", "create", false), "{role:?}");
        assert!(
            !grants(&role, "persistentvolumeclaims", "create", false),
            "{role:?}"
        );
        assert!(
            !grants(&cluster, "persistentvolumes", "patch", false),
            "{cluster:?}"
        );
        let (role, cluster) =
            chart_rules(&["data"], "apps", &["always", "keepData", "dataCopy"], None);
        // The temporary claims' names are not the claim's: no resourceNames.
        assert!(
            grants(&role, "persistentvolumeclaims", "create", false),
            "{role:?}"
        );
        assert!(grants(&role, "jobs", "delete", false), "{role:?}");
        assert!(grants(&role, "pods", "create", false), "{role:?}");
        assert!(
            grants(&cluster, "persistentvolumes", "patch", false),
            "{cluster:?}"
        );
        assert!(
            !grants(&role, "volumesnapshots", "create", false),
            "{role:?}"
        );
    }

    #[test]
    fn chart_rules_grant_the_snapshot_with_data_snapshot() {
        let (role, cluster) = chart_rules(
            &["data"],
            "apps",
            &["always", "keepData", "dataSnapshot"],
            None,
        );
        for verb in ["create", "get", "list", "watch"] {
            assert!(grants(&role, "volumesnapshots", verb, false), "{role:?}");
        }
        assert!(
            !grants(&role, "volumesnapshots", "delete", false),
            "{role:?}"
        );
        for verb in ["get", "list"] {
            assert!(
                grants(&cluster, "volumesnapshotclasses", verb, false),
                "{cluster:?}"
            );
        }
        assert!(
            grants(&role, "persistentvolumeclaims", "create", false),
            "{role:?}"
        );
        assert!(!grants(&role, "jobs", "create", false), "{role:?}");
        assert!(!grants(&role, "pods", "create", false), "{role:?}");
        let (role, _) = chart_rules(
            &["data"],
            "apps",
            &["always", "keepData", "dataSnapshot", "deleteSnapshot"],
            None,
        );
        assert!(
            grants(&role, "volumesnapshots", "delete", false),
            "{role:?}"
        );
    }
}
