//! The `herald webhooks` commands: a small client of a running standalone
//! or ingest process's admin port, which serves the dead letters.

use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum WebhookCommand {
    /// Print the dead letters (events that failed for the whole retry window) as JSON.
    DeadLetters(AdminArgs),
    /// Queue every dead letter again, with a fresh retry window.
    Replay(AdminArgs),
}

#[derive(clap::Args)]
pub struct AdminArgs {
    /// Admin (metrics) URL of a standalone or ingest process.
    #[arg(
        long,
        env = "HERALD_ADMIN_URL",
        default_value = "http://127.0.0.1:9601"
    )]
    admin: String,
}

/// Runs a `herald webhooks` command against a running process's admin port.
pub fn command(command: WebhookCommand) -> std::process::ExitCode {
    let (method, path, args) = match &command {
        WebhookCommand::DeadLetters(a) => (reqwest::Method::GET, "/webhooks/dead-letters", a),
        WebhookCommand::Replay(a) => (reqwest::Method::POST, "/webhooks/dead-letters/replay", a),
    };
    let url = format!("{}{path}", args.admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let response = reqwest::Client::new()
            .request(method, &url)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    match outcome {
        Ok((status, body)) if status.is_success() => {
            print!("{body}");
            std::process::ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("herald: {url} answered {status}: {}", body.trim());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("herald: cannot reach {url}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
