//! Connecting to the cluster: a kubeconfig (given, from $KUBECONFIG or ~/.kube/config) or the
//! pod's service account.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::config::Connection;
use crate::error::Error;

/// A refused or unroutable API server fails within this, not the client's default 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients of a run: one that retries throttled and unavailable answers by itself, and one
/// that does not, for evictions, whose 429 is a budget's refusal to report at once.
pub struct Clients {
    pub client: Client,
    pub no_retry: Client,
}

pub async fn connect(connection: &Connection) -> Result<Clients, Error> {
    let options = KubeConfigOptions {
        context: connection.context.clone(),
        ..Default::default()
    };
    let config = match (&connection.kubeconfig, &connection.context) {
        (Some(path), _) => {
            let at = |e: &dyn std::error::Error| config_error(Some(path), e);
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| at(&e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| at(&e))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| config_error(None, &e))?,
        (None, None) => Config::infer().await.map_err(|e| config_error(None, &e))?,
    };
    let mut config = config;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let mut no_retry = config.clone();
    no_retry.default_retry = false;
    Ok(Clients {
        client: Client::try_from(config).map_err(|e| config_error(None, &e))?,
        no_retry: Client::try_from(no_retry).map_err(|e| config_error(None, &e))?,
    })
}

/// A configuration error on one line that cannot leak credentials: a YAML parser's message can
/// quote the file (a token, a key) from its second line on, so only the first line is kept, and
/// quoted text in it is withheld; the line and column remain. kube's messages embed their causes.
fn config_error(path: Option<&std::path::Path>, error: &dyn std::error::Error) -> Error {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = redact_quoted(first.trim_end());
    Error::Config(match path {
        Some(path) => format!("kubeconfig {}: {message}", path.display()),
        None => message,
    })
}

fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(open) if c == open => {
                out.push_str("...");
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_withheld() {
        assert_eq!(
            redact_quoted("invalid type: string \"sha256~secret\", expected a map at line 3"),
            "invalid type: string \"...\", expected a map at line 3"
        );
        assert_eq!(redact_quoted("unterminated `abc"), "unterminated `...");
        assert_eq!(redact_quoted("no quotes"), "no quotes");
    }
}
