//! Connecting to the cluster: a kubeconfig (given, from $KUBECONFIG or ~/.kube/config) or the
//! pod's service account.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::config::Connection;
use crate::error::{Error, error_chain};

/// A refused or unroutable API server fails within this, not the client's default 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn connect(connection: &Connection) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: connection.context.clone(),
        ..Default::default()
    };
    let config = match (&connection.kubeconfig, &connection.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                Error::Config(format!(
                    "kubeconfig {}: {}",
                    path.display(),
                    error_chain(&e)
                ))
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "kubeconfig {}: {}",
                        path.display(),
                        error_chain(&e)
                    ))
                })?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(error_chain(&e)))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Config(error_chain(&e)))?,
    };
    let mut config = config;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config).map_err(|e| Error::Config(error_chain(&e)))
}
