use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use storageclass_migrate::config::SummaryFormat;
use storageclass_migrate::{Args, Error, ExitStatus, client, run, summary, telemetry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => return fail_input(&e),
    };
    telemetry::init(args.log_format);
    let status = match execute(&args).await {
        Ok(status) => status,
        Err(error) => {
            let line = format!("error: {}", error.to_string().replace('\n', " "));
            tracing::error!(exit_status = error.exit_status().code(), "{line}");
            summary::write_termination_log(&args.termination_log, &[line]);
            error.exit_status()
        }
    };
    ExitCode::from(status.code() as u8)
}

async fn execute(args: &Args) -> Result<ExitStatus, Error> {
    let config = args.config()?;
    let client = client::connect(&config.connection).await?;
    let outcomes = run::run(client, &config).await?;
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

/// A usage error on one line, exit status 2.
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
    eprintln!("{line}");
    let termination_log =
        std::env::var_os("TERMINATION_LOG").unwrap_or_else(|| "/dev/termination-log".into());
    summary::write_termination_log(std::path::Path::new(&termination_log), &[line]);
    ExitCode::from(ExitStatus::BadInput.code() as u8)
}
