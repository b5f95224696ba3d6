//! The `oxserve` command line: `serve` (tensorflow_model_server), `show` and `run`
//! (saved_model_cli).

mod client;
mod lifecycle;
mod local_model;
mod npy;
mod platform_config;
mod predict;
mod run;
mod serve;
mod show;

use std::io::IsTerminal;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "oxserve",
    version,
    about = "Serve TensorFlow and Keras SavedModels (a drop-in replacement for TensorFlow Serving)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve models over TF Serving's REST and gRPC APIs (takes tensorflow_model_server's flags).
    Serve(Box<serve::ServeArgs>),
    /// Show the tag sets and signatures of a SavedModel (like `saved_model_cli show`).
    Show(show::ShowArgs),
    /// Run a signature of a SavedModel on given inputs (like `saved_model_cli run`).
    Run(run::RunArgs),
    /// Batch prediction over JSON-lines and TFRecord files, in process (like Cloud ML Engine's).
    Predict(Box<predict::PredictArgs>),
    /// Talk to a TF Serving-compatible server (oxserve or TF Serving) over REST or gRPC.
    Client(client::ClientArgs),
}

/// Large buffers (images, batches) aligned as TensorFlow wants them, so that it uses them in place.
#[global_allocator]
static ALLOC: oxserve_tensorflow::TensorAligned = oxserve_tensorflow::TensorAligned;

fn main() -> std::process::ExitCode {
    // Before any thread exists: TensorFlow reads its log level and kernel choice from the
    // environment when loaded.
    oxserve_tensorflow::set_tensorflow_env_defaults();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours on a terminal only: logs piped to a file or a collector stay plain text.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let matches = parse_command_line();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let result = match cli.command {
        Command::Serve(args) => {
            let given = matches
                .subcommand_matches("serve")
                .map(given_on_command_line)
                .unwrap_or_default();
            serve::serve(*args, &given)
        }
        Command::Show(args) => show::show(&args),
        Command::Run(args) => run::run(&args),
        Command::Predict(args) => predict::predict(&args),
        Command::Client(args) => client::client(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<serve::StartFailed>() {
            // tensorflow_model_server's words and status (`return -1` from main).
            Some(failed) => {
                eprintln!("Failed to start server. Error: {failed}");
                std::process::ExitCode::from(255)
            }
            None => {
                eprintln!("Error: {err:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// The command line, or clap's usage error. `serve`'s usage errors end with
/// tensorflow_model_server's status for flags that do not parse (255, `return -1`), which
/// deployments may check; the other subcommands keep clap's (2).
fn parse_command_line() -> ArgMatches {
    Cli::command().try_get_matches().unwrap_or_else(|err| {
        let serving = std::env::args_os().nth(1).is_some_and(|arg| arg == "serve");
        if serving && err.use_stderr() {
            // Printing can only fail on a closed stderr, where there is nobody to tell.
            let _ = err.print();
            std::process::exit(255);
        }
        err.exit()
    })
}

/// The ids of the flags given on the command line (not defaults or environment variables).
fn given_on_command_line(matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}
