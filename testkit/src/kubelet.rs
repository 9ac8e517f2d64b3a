//! The stand-in kubelet: finishes the pods of one namespace that are deleted or evicted.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use futures::{FutureExt, TryStreamExt, future::Either};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};

use crate::{
    api::WAIT_TIMEOUT,
    background::{Background, Ready},
    control_plane::client,
};

/// Watches the pods of `ns` matching `config` and calls `on_pod` with every version seen (the
/// initial list included); sends `ready` once the initial list is done, so that a pod created
/// next is seen. Runs until the watch fails for good.
pub(crate) async fn each_pod<F, Fut>(
    ns: &str,
    config: watcher::Config,
    mut ready: Ready<()>,
    mut on_pod: F,
) where
    F: FnMut(Pod) -> Fut,
    Fut: Future<Output = ()>,
{
    let api: Api<Pod> = Api::namespaced(client().await, ns);
    let events = watcher(api, config).default_backoff();
    let result = events
        .try_for_each(|event| match event {
            watcher::Event::InitDone => {
                ready.send(());
                Either::Left(futures::future::ready(Ok(())))
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                Either::Right(on_pod(pod).map(Ok))
            }
            _ => Either::Left(futures::future::ready(Ok(()))),
        })
        .await;
    eprintln!("pod watch of {ns} ended: {result:?}");
}

/// Stands in for the kubelet of every node in one namespace: a pod that gets a
/// `deletionTimestamp` (deleted or evicted) is force-deleted (grace period 0), as a kubelet
/// would after stopping its containers. Runs on its own thread and runtime until dropped.
#[derive(Debug)]
pub struct KubeletStandIn {
    _task: Background,
    deleted: Arc<Mutex<Vec<String>>>,
}

impl KubeletStandIn {
    /// Starts one for namespace `ns`. Returns once its watch is established; the initial list
    /// is part of the watch, so pods already terminating are finished too.
    pub fn start(ns: &str) -> KubeletStandIn {
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let record = deleted.clone();
        let namespace = ns.to_string();
        let (task, _) = Background::start(
            &format!("kubelet-stand-in-{ns}"),
            WAIT_TIMEOUT,
            move |ready| async move {
                let client = client().await;
                let api: Api<Pod> = Api::namespaced(client, &namespace);
                // uids already force-deleted: a terminating pod may be seen more than once.
                let mut handled = HashSet::new();
                each_pod(&namespace, watcher::Config::default(), ready, |pod| {
                    let target = (pod.metadata.deletion_timestamp.is_some()
                        && handled.insert(pod.uid().unwrap_or_default()))
                    .then(|| (pod.name_any(), pod.uid()));
                    if let Some((name, _)) = &target {
                        // Recorded first: watchers may see the pod vanish before the delete
                        // call returns.
                        record.lock().unwrap().push(name.clone());
                    }
                    let api = api.clone();
                    async move {
                        if let Some((name, uid)) = target {
                            let dp = DeleteParams {
                                grace_period_seconds: Some(0),
                                ..DeleteParams::default()
                            }
                            .preconditions(Preconditions {
                                uid,
                                resource_version: None,
                            });
                            // An error means the pod is gone already or was replaced.
                            let _ = api.delete(&name, &dp).await;
                        }
                    }
                })
                .await;
            },
        );
        KubeletStandIn {
            _task: task,
            deleted,
        }
    }

    /// Names of the pods it has force-deleted so far (in order; a name once per deletion).
    pub fn deleted_pods(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
    }
}
