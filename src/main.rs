use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use storageclass_migrate::config::{Command, CopyArgs, LogFormat, SummaryFormat};
use storageclass_migrate::{Args, Error, ExitStatus, client, copy, run, summary, telemetry};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => return fail_input(&e),
    };
    telemetry::init(args.log_format);
    report_panics(&args);
    let status = match &args.command {
        Some(Command::Copy(copy)) => copy_data(&args, copy),
        None => hook(&args),
    };
    ExitCode::from(status.code() as u8)
}

/// The hook: no command given.
fn hook(args: &Args) -> ExitStatus {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                args,
                &format!("internal error: cannot start the runtime: {e}"),
                ExitStatus::Internal,
            );
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(status) => status,
        Err(error) => fail(args, &error.to_string(), error.exit_status()),
    }
}

/// `copy --from DIR --to DIR`: the summary line (or JSON object) on stdout.
fn copy_data(args: &Args, copy: &CopyArgs) -> ExitStatus {
    match copy::run(&copy.options()) {
        Ok(report) => {
            let line = report.line();
            match args.summary_format {
                SummaryFormat::Text => println!("{line}"),
                SummaryFormat::Json => println!("{}", report.json()),
            }
            summary::write_termination_log(&args.termination_log, &[line]);
            report.status
        }
        Err(error) => fail(args, &error.to_string(), error.exit_status()),
    }
}

/// An error that ends the run: logged on stderr and written to the termination log. The hook's
/// stdout holds claim summaries only; a copy's error is its summary, on stdout too.
fn fail(args: &Args, error: &str, status: ExitStatus) -> ExitStatus {
    let line = format!("error: {}", error.replace('\n', " "));
    tracing::error!(exit_status = status.code(), "{line}");
    if args.command.is_some() {
        println!("{line}");
    }
    summary::write_termination_log(&args.termination_log, &[line]);
    status
}

async fn execute(args: &Args) -> Result<ExitStatus, Error> {
    let config = args.config()?;
    let clients = client::connect(&config.connection).await?;
    let outcomes = run::run(clients.client, clients.no_retry, &config, stop_signals()).await?;
    let lines: Vec<String> = outcomes.iter().map(summary::Outcome::line).collect();
    for (outcome, line) in outcomes.iter().zip(&lines) {
        match args.summary_format {
            SummaryFormat::Text => println!("{line}"),
            SummaryFormat::Json => println!("{}", outcome.json()),
        }
    }
    summary::write_termination_log(&args.termination_log, &lines);
    Ok(summary::worst(&outcomes))
}

/// SIGTERM (the Job's deadline, a drain, an interrupted helm) and SIGINT ask the run to stop: it
/// ends its requests and still reports what it did and what is left.
fn stop_signals() -> watch::Receiver<Option<&'static str>> {
    let (send, receive) = watch::channel(None);
    let listen = |kind: SignalKind, name: &'static str| {
        let send = send.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    if stream.recv().await.is_some() {
                        tracing::warn!(signal = name, "stopping");
                        send.send_replace(Some(name));
                    }
                });
            }
            Err(error) => tracing::warn!(signal = name, %error, "cannot listen for the signal"),
        }
    };
    listen(SignalKind::terminate(), "SIGTERM");
    listen(SignalKind::interrupt(), "SIGINT");
    receive
}

/// A panic is a bug: it still ends with a summary line and exit status 1.
fn report_panics(args: &Args) {
    let termination_log = args.termination_log.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let line = format!("error: internal error: {info}").replace('\n', " ");
        println!("{line}");
        summary::write_termination_log(&termination_log, &[line]);
        std::process::exit(ExitStatus::Internal.code());
    }));
}

/// The log format of the command line or `LOG_FORMAT`, read without the parser that failed.
fn requested_log_format() -> LogFormat {
    let args: Vec<String> = std::env::args().collect();
    let flag = args
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.as_str() {
            "--log-format" => args.get(i + 1).cloned(),
            _ => arg.strip_prefix("--log-format=").map(str::to_owned),
        });
    match flag.or_else(|| std::env::var("LOG_FORMAT").ok()).as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// A usage error on one line, exit status 2, logged in the format asked for (a usage error may be
/// in another argument than `--log-format`).
fn fail_input(error: &clap::Error) -> ExitCode {
    let rendered = error.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ");
    telemetry::init(requested_log_format());
    tracing::error!(exit_status = ExitStatus::BadInput.code(), "{line}");
    let termination_log =
        std::env::var_os("TERMINATION_LOG").unwrap_or_else(|| "/dev/termination-log".into());
    summary::write_termination_log(std::path::Path::new(&termination_log), &[line]);
    ExitCode::from(ExitStatus::BadInput.code() as u8)
}
