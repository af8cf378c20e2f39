//! `mock-upstream [--listen ADDR] [--api-key KEY] [--name NAME]`: serves the
//! scriptable mock OpenAI-compatible upstream until killed.

use std::process::ExitCode;

use mock_upstream::{MockOptions, DEFAULT_LISTEN};

const USAGE: &str = "usage: mock-upstream [--listen ADDR] [--api-key KEY] [--name NAME]
  --listen ADDR   address to listen on (default 127.0.0.1:10001)
  --api-key KEY   answer 401 unless requests carry `authorization: Bearer KEY`
  --name NAME     value of the x-mock-name response header (default mock)";

struct Args {
    listen: String,
    options: MockOptions,
}

/// Reads `--flag value` and `--flag=value` forms; `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: DEFAULT_LISTEN.to_owned(),
        options: MockOptions::default(),
    };
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline_value
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => parsed.listen = value()?,
            "--api-key" => parsed.options.expected_api_key = Some(value()?),
            "--name" => parsed.options.name = value()?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(Some(parsed))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mock-upstream: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |addr| addr.to_string());
    println!("mock-upstream listening on {addr}");
    mock_upstream::serve(listener, args.options).await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap().unwrap();
        assert_eq!(args.listen, DEFAULT_LISTEN);
        assert_eq!(args.options.name, "mock");
        assert_eq!(args.options.expected_api_key, None);
    }

    #[test]
    fn both_value_forms() {
        let args = parse(&["--listen", "127.0.0.1:0", "--api-key=k1", "--name", "b"])
            .unwrap()
            .unwrap();
        assert_eq!(args.listen, "127.0.0.1:0");
        assert_eq!(args.options.expected_api_key.as_deref(), Some("k1"));
        assert_eq!(args.options.name, "b");
    }

    #[test]
    fn errors() {
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }
}
