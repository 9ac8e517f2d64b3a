//! The stand-in scheduler of StatefulSet pods: there is no scheduler on the local control plane,
//! so the pods the StatefulSet controller makes would stay unscheduled and, by the rule of the
//! pvc-protection controller, use no claim. [`PodBinder`] binds each of them to a node through the
//! `pods/binding` subresource, as the scheduler does, then marks it `Running` and `Ready`, as a
//! kubelet would once its containers started (an `OrderedReady` StatefulSet then goes on to the
//! next ordinal, and budgets count the pod healthy).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;

use crate::{
    TestNamespace, api::WAIT_TIMEOUT, background::Background, control_plane::client,
    kubelet::each_pod, objects::create_node,
};

/// The label the StatefulSet controller puts on each of its pods.
pub const STATEFULSET_POD_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// Binds the StatefulSet pods of one namespace to node `<namespace>-node-sts` and marks them
/// running. Runs on its own thread and runtime until dropped.
#[derive(Debug)]
pub struct PodBinder {
    _task: Background,
    bound: Arc<Mutex<Vec<String>>>,
    /// The node the pods are bound to.
    pub node: String,
}

impl PodBinder {
    /// Creates the node and starts binding; returns once the watch is established (pods already
    /// waiting are bound too).
    pub async fn start(ns: &TestNamespace) -> PodBinder {
        let node = create_node(ns, "node-sts").await.name_any();
        let bound = Arc::new(Mutex::new(Vec::new()));
        let record = bound.clone();
        let namespace = ns.name().to_string();
        let target = node.clone();
        let (task, _) = Background::start(
            &format!("pod-binder-{namespace}"),
            WAIT_TIMEOUT,
            move |ready| async move {
                let api: Api<Pod> = Api::namespaced(client().await, &namespace);
                // uids already handled: a pod is seen again after each change.
                let mut handled = HashSet::new();
                let config = watcher::Config::default().labels(STATEFULSET_POD_LABEL);
                each_pod(&namespace, config, ready, |pod| {
                    let todo = (pod.metadata.deletion_timestamp.is_none()
                        && handled.insert(pod.uid().unwrap_or_default()))
                    .then(|| (pod.name_any(), crate::objects::node_of(&pod).is_empty()));
                    let api = api.clone();
                    let node = target.clone();
                    let record = record.clone();
                    async move {
                        let Some((name, unbound)) = todo else {
                            return;
                        };
                        if unbound && let Err(e) = bind(&api, &name, &node).await {
                            eprintln!("binding pod {name} to {node}: {e}");
                            return;
                        }
                        if let Err(e) = mark_running(&api, &name).await {
                            eprintln!("marking pod {name} running: {e}");
                            return;
                        }
                        record.lock().unwrap().push(name);
                    }
                })
                .await;
            },
        );
        PodBinder {
            _task: task,
            bound,
            node,
        }
    }

    /// Names of the pods bound so far, in order (a name once per pod made).
    pub fn bound_pods(&self) -> Vec<String> {
        self.bound.lock().unwrap().clone()
    }
}

/// `POST pods/<name>/binding`, as the scheduler binds a pod.
pub(crate) async fn bind(api: &Api<Pod>, name: &str, node: &str) -> Result<(), kube::Error> {
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

async fn mark_running(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    let ready = |type_: &str| json!({"type": type_, "status": "True"});
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map(|_| ())
}
