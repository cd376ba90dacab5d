//! The `percore hash-password`, `hash-token` and `new-token` tools: stdin in, one line out; they never start a server.

use std::io::BufRead;
use std::process::ExitCode;

use super::password;
use crate::EXIT_USAGE;
use crate::config::Command;

pub fn run(command: &Command) -> ExitCode {
    match command {
        Command::HashPassword => hash_stdin("password", password::hash),
        Command::HashToken => hash_stdin("token", password::token_hash),
        Command::NewToken => {
            let token = password::new_token();
            println!("{token}\n{}", password::token_hash(&token));
            ExitCode::SUCCESS
        }
        Command::Reshard { .. } => {
            unreachable!("main_with runs the reshard: it needs the data dir")
        }
    }
}

/// Reads one line (without its line ending) and prints `hash(line)`.
fn hash_stdin(what: &str, hash: fn(&str) -> String) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        crate::log_line!("percore: cannot read the {what} from stdin: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let secret = line.strip_suffix('\n').unwrap_or(&line);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        crate::log_line!("percore: empty {what} on stdin");
        return ExitCode::from(EXIT_USAGE);
    }
    println!("{}", hash(secret));
    ExitCode::SUCCESS
}
