//! One request to the API, bounded in time, with brief retries of failures that a retry can fix:
//! a dropped or reset connection, and 429/5xx answers that outlast the client's own retries.
//! Every request the binary sends is idempotent (deletes carry uid preconditions, patches a
//! resourceVersion), so a retry after an unseen success is harmless.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::warn;

use crate::error::{Error, Request, describe_kube_error};

const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Runs `send` until it succeeds, fails for good, or `limit` passes. The inner result is the
/// API's answer for the caller to match (404, 409, ...); the outer error is a timeout.
pub async fn call<T, F, Fut>(
    limit: Duration,
    request: &Request,
    mut send: F,
) -> Result<Result<T, kube::Error>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let answer = timeout_at(deadline, send())
            .await
            .map_err(|_| Error::Timeout {
                after: limit,
                what: format!("an answer to {request}"),
            })?;
        match answer {
            Err(error)
                if attempt < ATTEMPTS
                    && transient(&error)
                    && Instant::now() + backoff < deadline =>
            {
                warn!(%request, attempt, error = %describe_kube_error(&error), "request failed; retrying");
                sleep_until(Instant::now() + backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            answer => return Ok(answer),
        }
    }
}

/// Failures a retry may fix: no answer at all, throttling and server errors. A refused or
/// unauthorized request is final.
pub fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn which_failures_are_retried() {
        assert!(transient(&status(500)));
        assert!(transient(&status(503)));
        assert!(transient(&status(429)));
        assert!(!transient(&status(403)));
        assert!(!transient(&status(404)));
        assert!(!transient(&status(409)));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_server_error_then_succeeds() {
        let tries = Cell::new(0);
        let answer = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                let result = if tries.get() < 3 {
                    Err(status(500))
                } else {
                    Ok(7)
                };
                async move { result }
            },
        )
        .await
        .unwrap();
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(tries.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_attempts() {
        let tries = Cell::new(0);
        let answer: Result<(), _> = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                async { Err(status(503)) }
            },
        )
        .await
        .unwrap();
        assert!(answer.is_err());
        assert_eq!(tries.get(), ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_a_refusal() {
        let tries = Cell::new(0);
        let answer: Result<(), _> = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                async { Err(status(403)) }
            },
        )
        .await
        .unwrap();
        assert!(answer.is_err());
        assert_eq!(tries.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_request_times_out() {
        let request = Request::new("get", "persistentvolumeclaims").name("data");
        let error = call::<(), _, _>(Duration::from_secs(3), &request, std::future::pending)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 3s waiting for an answer to get persistentvolumeclaims \"data\""
        );
    }
}
