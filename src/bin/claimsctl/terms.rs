//! `terms validate` and `terms apply`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use claims::domain::{format_date, Catalogue, FieldErrors, Terms};
use claims::proto::terms_service_client::TermsServiceClient;
use claims::proto::{self, TermsText};
use tonic::transport::Channel;

use crate::show::{code_name, outcome_name, status_text};
use crate::table::{Align, Table};
use crate::{fail, Result};

/// The files named: files as given, directories replaced by their *.toml files in name order.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| fail(format!("{}: {e}", path.display())))?;
                let p = entry.path();
                if p.is_file() && p.extension().is_some_and(|x| x == "toml") {
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(fail(format!("{}: no *.toml file in this directory", path.display())));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn read(path: &Path) -> std::result::Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// `file: field: message`, or `file: message` for a problem with the whole file.
fn problem(file: &Path, field: &str, message: &str) -> String {
    if field.is_empty() {
        format!("{}: {message}", file.display())
    } else {
        format!("{}: {field}: {message}", file.display())
    }
}

fn print_errors(file: &Path, errors: &FieldErrors) {
    for e in errors.iter() {
        crate::outln!("{}", problem(file, &e.field, &e.message));
    }
}

/// Checks each file with `Terms::from_toml`, then the good ones together (two files of one product
/// must not have overlapping periods), in the order given.
pub fn validate_local(paths: &[PathBuf]) -> Result<ExitCode> {
    let files = expand(paths)?;
    let mut catalogue = Catalogue::new();
    let mut bad = 0usize;
    for file in &files {
        let text = match read(file) {
            Ok(text) => text,
            Err(message) => {
                crate::outln!("{}", problem(file, "", &message));
                bad += 1;
                continue;
            }
        };
        let terms = match Terms::from_toml(&text) {
            Ok(terms) => terms,
            Err(errors) => {
                print_errors(file, &errors);
                bad += 1;
                continue;
            }
        };
        let summary = format!(
            "{} {}..{}, {} benefit(s)",
            terms.product.code,
            format_date(terms.product.period.start),
            format_date(terms.product.period.end),
            terms.benefits.len()
        );
        match catalogue.apply(terms) {
            Ok(_) => crate::outln!("{}: ok: {summary}", file.display()),
            Err(errors) => {
                print_errors(file, &errors);
                bad += 1;
            }
        }
    }
    eprintln!("{} file(s) checked locally, {bad} with problems", files.len());
    Ok(if bad > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub async fn validate_remote(channel: Channel, paths: &[PathBuf]) -> Result<ExitCode> {
    let files = expand(paths)?;
    let mut client = TermsServiceClient::new(channel);
    let mut bad = 0usize;
    for file in &files {
        let text = match read(file) {
            Ok(text) => text,
            Err(message) => {
                crate::outln!("{}", problem(file, "", &message));
                bad += 1;
                continue;
            }
        };
        match client.validate_terms(TermsText { toml: text }).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.valid && response.violations.is_empty() {
                    crate::outln!("{}: ok", file.display());
                } else {
                    bad += 1;
                    for v in &response.violations {
                        crate::outln!("{}", problem(file, &v.field, &v.description));
                    }
                    if response.violations.is_empty() {
                        crate::outln!("{}", problem(file, "", "refused (the server gave no details)"));
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                bad += 1;
                print_violation_message(file, &status);
            }
            Err(status) => {
                return Err(fail(format!(
                    "ValidateTerms of {}: {}",
                    file.display(),
                    status_text(&status)
                )))
            }
        }
    }
    eprintln!("{} file(s) checked by the server, {bad} with problems", files.len());
    Ok(if bad > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The field violations of an INVALID_ARGUMENT status, which the server also writes into the message,
/// one `field: message` per line; printed `file: field: message`.
fn print_violation_message(file: &Path, status: &tonic::Status) {
    let message = status.message().trim();
    if message.is_empty() {
        crate::outln!("{}", problem(file, "", &code_name(status.code() as i32)));
    }
    for line in message.lines().filter(|l| !l.trim().is_empty()) {
        crate::outln!("{}: {line}", file.display());
    }
}

pub async fn apply(channel: Channel, paths: &[PathBuf]) -> Result<ExitCode> {
    let files = expand(paths)?;
    let mut client = TermsServiceClient::new(channel);
    let mut table = Table::new(&[
        ("file", Align::Left),
        ("product", Align::Left),
        ("period", Align::Left),
        ("version", Align::Right),
        ("outcome", Align::Left),
    ]);
    let mut refused = 0usize;
    for file in &files {
        let text = match read(file) {
            Ok(text) => text,
            Err(message) => {
                eprintln!("{}", problem(file, "", &message));
                refused += 1;
                continue;
            }
        };
        match client.apply_terms(TermsText { toml: text }).await {
            Ok(response) => {
                let r: proto::ApplyTermsResponse = response.into_inner();
                table.row([
                    file.display().to_string(),
                    r.product_code,
                    format!("{}..{}", r.period_start, r.period_end),
                    r.version.to_string(),
                    outcome_name(r.outcome),
                ]);
            }
            Err(status) => {
                refused += 1;
                eprintln!("{}: refused: {}", file.display(), code_name(status.code() as i32));
                if status.code() == tonic::Code::InvalidArgument {
                    for line in status.message().lines().filter(|l| !l.trim().is_empty()) {
                        eprintln!("{}: {line}", file.display());
                    }
                } else if !status.message().is_empty() {
                    eprintln!("{}: {}", file.display(), status.message());
                }
                // Without the server nothing else can be applied.
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unimplemented) {
                    if !table.is_empty() {
                        table.print();
                    }
                    return Err(fail(format!("ApplyTerms: {}", status_text(&status))));
                }
            }
        }
    }
    if !table.is_empty() {
        table.print();
    }
    eprintln!(
        "{} file(s): {} applied, {refused} refused",
        files.len(),
        files.len() - refused
    );
    Ok(if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_file_and_field() {
        assert_eq!(
            problem(Path::new("a.toml"), "benefit[0].bands", "must start at 0"),
            "a.toml: benefit[0].bands: must start at 0"
        );
        assert_eq!(
            problem(Path::new("a.toml"), "", "not valid TOML"),
            "a.toml: not valid TOML"
        );
    }

    #[test]
    fn example_terms_validate_locally() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/terms");
        let files = expand(&[dir]).unwrap();
        assert!(files.len() >= 13);
        assert!(files.windows(2).all(|w| w[0] < w[1]));
        let mut catalogue = Catalogue::new();
        for f in files {
            let terms = Terms::from_toml(&std::fs::read_to_string(&f).unwrap()).unwrap();
            catalogue.apply(terms).unwrap();
        }
    }
}
