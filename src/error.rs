//! Errors and the exit status each one maps to.

use std::fmt;
use std::time::Duration;

/// Exit status of the process, documented in the README and in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Done, or nothing to do.
    Ok = 0,
    /// Internal error: a bug, or an answer from the API that cannot be understood.
    Internal = 1,
    /// Bad input: nothing was sent to the API.
    BadInput = 2,
    /// Refused for safety: nothing was changed.
    Refused = 3,
    /// Kubernetes API error: unreachable, unauthorized, forbidden or failed.
    Api = 4,
    /// Timed out waiting for the cluster, before anything was changed.
    Timeout = 5,
    /// Stopped part-way: something was changed, then a failure, refusal, timeout or signal
    /// stopped the run; the summary lists what was done and what is left, a rerun finishes it.
    PartWay = 6,
    /// `copy`: an entry could not be copied, or the verification found a difference.
    CopyIncomplete = 7,
}

impl serde::Serialize for ExitStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(self.code())
    }
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// What a request was doing when it failed: verb, resource and object, as RBAC names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub verb: &'static str,
    pub resource: &'static str,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Request {
    pub fn new(verb: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            resource,
            name: None,
            namespace: None,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(namespace) = &self.namespace {
            write!(f, " in namespace {namespace:?}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Input(String),

    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),

    #[error("{0}")]
    Refused(crate::decision::Refusal),

    #[error("{request}: {}", describe_kube_error(.source))]
    Api {
        request: Request,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("timed out after {} waiting for {what}{}", humantime::format_duration(*.after), suffix_last_error(.last_error))]
    Timeout {
        after: Duration,
        what: String,
        /// The last failure seen meanwhile, which often explains the wait.
        last_error: Option<String>,
    },

    #[error("{0}")]
    Stopped(Stop),

    /// The copy of `--data copy` failed, after the claim was deleted: the old data is kept.
    #[error("{0}")]
    CopyFailed(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn api(request: Request, source: kube::Error) -> Self {
        match source {
            kube::Error::SerdeError(e) => {
                Error::Internal(format!("{request}: unexpected answer: {e}"))
            }
            source => Error::Api {
                request,
                source: Box::new(source),
            },
        }
    }

    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Input(_) | Error::Config(_) => ExitStatus::BadInput,
            Error::Refused(_) => ExitStatus::Refused,
            Error::Api { .. } => ExitStatus::Api,
            Error::Timeout { .. } | Error::Stopped(_) => ExitStatus::Timeout,
            Error::CopyFailed(_) => ExitStatus::PartWay,
            Error::Internal(_) => ExitStatus::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a run stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM (the Job's deadline, a node drain, `helm` interrupted) or SIGINT.
    Signal(&'static str),
    /// The run's own deadline (`--deadline`).
    Deadline(Duration),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Signal(name) => write!(f, "stopped by {name}"),
            Stop::Deadline(after) => write!(
                f,
                "stopped at the run's deadline ({})",
                humantime::format_duration(*after)
            ),
        }
    }
}

fn suffix_last_error(error: &Option<String>) -> String {
    error
        .as_ref()
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default()
}

/// One line for a failed request: the API's own message where it sent one (it names the user, verb
/// and resource for a 403), else the chain of transport errors.
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            };
            let message = status.message.trim();
            if message.is_empty() {
                format!("HTTP {}{reason}", status.code)
            } else {
                format!("HTTP {}{reason}: {message}", status.code)
            }
        }
        other => error_chain(other),
    }
}

/// An error and its sources on one line, without the repetitions that nested messages often carry.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names_verb_resource_and_message() {
        let status = kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "persistentvolumes \"pv-1\" is forbidden: User \"system:serviceaccount:ns:hook\" cannot delete resource \"persistentvolumes\"".into(),
            ..Default::default()
        };
        let error = Error::api(
            Request::new("delete", "persistentvolumes").name("pv-1"),
            kube::Error::Api(Box::new(status)),
        );
        assert_eq!(error.exit_status(), ExitStatus::Api);
        let line = error.to_string();
        assert!(
            line.starts_with("delete persistentvolumes \"pv-1\": HTTP 403 Forbidden: "),
            "{line}"
        );
        assert!(
            line.contains("cannot delete resource \"persistentvolumes\""),
            "{line}"
        );
    }

    #[test]
    fn statuses_order_by_code() {
        assert!(ExitStatus::Timeout > ExitStatus::Api);
        assert!(ExitStatus::Refused > ExitStatus::Ok);
        assert_eq!(ExitStatus::Timeout.code(), 5);
    }
}
