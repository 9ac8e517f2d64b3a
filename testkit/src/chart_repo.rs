//! A Helm chart repository on a loopback port: charts packaged with `helm package`, an
//! `index.yaml` from `helm repo index`, served over plain HTTP on `127.0.0.1` from a background
//! thread. [`app_repository`] is the one of this test process, with `examples/app` (its
//! `chart-snippet` dependency inside the package), for Flux's source-controller to fetch.

use std::{
    convert::Infallible,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    background::Background,
    helm::{Helm, charts},
};

/// A chart repository being served; it stops when dropped.
#[derive(Debug)]
pub struct ChartRepository {
    /// `http://127.0.0.1:<port>`, the repository's URL (`index.yaml` below it).
    pub url: String,
    /// The directory served: `index.yaml` and the packaged charts.
    pub dir: PathBuf,
    _server: Background,
}

impl ChartRepository {
    /// Packages each chart directory of `charts` (dependencies already built) into `dir`, indexes
    /// it and serves it on a free loopback port.
    pub fn serve(charts: &[&Path], dir: &Path) -> Result<ChartRepository, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let listener =
            StdListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let dir_arg = dir.display().to_string();
        for chart in charts {
            let chart = chart.display().to_string();
            helm(&["package", &chart, "--destination", &dir_arg])?;
        }
        helm(&["repo", "index", &dir_arg, "--url", &url])?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let root = dir.to_path_buf();
        let (server, ready) = Background::start(
            "chart-repository",
            Duration::from_secs(10),
            |mut ready| async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("chart repository: {e}"),
                };
                ready.send(());
                serve(listener, root).await;
            },
        );
        ready.ok_or("the chart repository did not start")?;
        Ok(ChartRepository {
            url,
            dir: dir.to_path_buf(),
            _server: server,
        })
    }
}

/// The chart repository of this test process: `examples/app` (the copy [`charts`] prepared),
/// packaged into `<charts base>/repository`. Started on first use; it runs until the process
/// exits.
pub fn app_repository() -> &'static ChartRepository {
    static REPOSITORY: OnceLock<ChartRepository> = OnceLock::new();
    REPOSITORY.get_or_init(|| {
        let charts = charts();
        ChartRepository::serve(&[&charts.app], &charts.base.join("repository"))
            .unwrap_or_else(|e| panic!("serving the chart repository: {e}"))
    })
}

fn helm(args: &[&str]) -> Result<(), String> {
    let out = charts().run_blocking(Helm::V3, args);
    if out.ok() {
        Ok(())
    } else {
        Err(out.to_string())
    }
}

async fn serve(listener: TcpListener, root: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let root = root.clone();
                async move { Ok::<_, Infallible>(respond(&root, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `GET /<file>` of a file directly in `root`; anything else is 404 (405 for other methods).
fn respond(root: &Path, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, vec![]);
    }
    let name = request.uri().path().trim_start_matches('/');
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return reply(StatusCode::NOT_FOUND, vec![]);
    }
    match std::fs::read(root.join(name)) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(_) => reply(StatusCode::NOT_FOUND, vec![]),
    }
}
