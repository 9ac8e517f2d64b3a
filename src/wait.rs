//! Waiting for an object to reach a state by watching it, never by sleep-polling. A watch that
//! drops is re-established until the deadline; a request the API refuses ends the wait at once.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::serde::de::DeserializeOwned;
use kube::Api;
use kube::Resource;
use kube::runtime::wait::{Condition, Error as WaitError, await_condition};
use kube::runtime::watcher;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::error::{Error, Request};

/// How a wait ended without an error.
#[derive(Debug)]
pub enum Waited<K> {
    /// The condition holds; the object if it still exists.
    Done(Option<K>),
    /// The deadline passed first; the last failure of the watch, if any, says why it may have.
    TimedOut { last_error: Option<String> },
}

/// Waits until `condition` holds for the object `name`, for at most `limit`.
pub async fn until<K, C>(
    api: &Api<K>,
    name: &str,
    limit: Duration,
    condition: C,
    request: Request,
) -> Result<Waited<K>, Error>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
    C: Condition<K> + Clone,
{
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(100);
    let mut last_error = None;
    loop {
        match timeout_at(
            deadline,
            await_condition(api.clone(), name, condition.clone()),
        )
        .await
        {
            Err(_) => return Ok(Waited::TimedOut { last_error }),
            Ok(Ok(object)) => return Ok(Waited::Done(object)),
            Ok(Err(WaitError::ProbeFailed(error))) => {
                let described = crate::error::error_chain(&error);
                if let Some(source) = permanent(error) {
                    return Err(Error::api(request, source));
                }
                tracing::warn!(%request, error = %described, "watch interrupted; re-establishing it");
                last_error = Some(described);
                sleep_until((Instant::now() + backoff).min(deadline)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The error to stop on: the API refused the list or watch itself (unauthorized, forbidden, bad
/// request). Dropped connections, server errors and expired resource versions are retried.
fn permanent(error: watcher::Error) -> Option<kube::Error> {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        watcher::Error::NoResourceVersion => return None,
    };
    match &source {
        kube::Error::Api(status)
            if (400..500).contains(&status.code)
                && ![408, 409, 410, 429].contains(&status.code) =>
        {
            Some(source)
        }
        _ => None,
    }
}

/// The object is gone, or replaced by one with another uid.
pub fn deleted<K: Resource>(uid: &str) -> impl Condition<K> + Clone {
    let uid = uid.to_owned();
    move |object: Option<&K>| object.is_none_or(|o| o.meta().uid.as_deref() != Some(uid.as_str()))
}
