//! `members import` (roster CSV -> one Enroll client stream) and `member show`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use claims::api::convert::category_value;
use claims::domain::Category;
use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::{EnrollmentRow, GetMemberRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::show::print_member;
use crate::table::{Align, Table};
use crate::{fail, rpc_error, Result};

/// The roster's columns, by header name.
pub const COLUMNS: [&str; 6] = [
    "member_id",
    "category",
    "effective_date",
    "product_code",
    "period_start",
    "premium",
];

/// Where each known column is in the file; `None` when the file leaves an optional column out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    index: [Option<usize>; 6],
    width: usize,
}

impl Columns {
    /// Reads the header row: `member_id` is required, unknown names are refused (a misspelt column
    /// would otherwise be silently ignored).
    pub fn from_header(header: &csv::StringRecord) -> std::result::Result<Columns, String> {
        let mut index = [None; 6];
        let mut unknown = Vec::new();
        for (i, name) in header.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}');
            match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
                Some(c) if index[c].is_some() => return Err(format!("column {name:?} appears twice")),
                Some(c) => index[c] = Some(i),
                None => unknown.push(format!("{name:?}")),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "unknown column(s) {}; the columns are {}",
                unknown.join(", "),
                COLUMNS.join(",")
            ));
        }
        if index[0].is_none() {
            return Err(format!("no member_id column; the columns are {}", COLUMNS.join(",")));
        }
        Ok(Columns {
            index,
            width: header.len(),
        })
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, column: usize) -> &'r str {
        self.index[column]
            .and_then(|i| record.get(i))
            .map(str::trim)
            .unwrap_or("")
    }
}

/// One row that could not be sent: its CSV line and what is wrong, as (field, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub line: u64,
    pub problems: Vec<(String, String)>,
}

/// Converts one CSV record to a stream row. Only what cannot be put in a row at all is refused here
/// (an unknown category name, too many cells); everything else is the server's to judge.
pub fn row_from_record(
    columns: &Columns,
    record: &csv::StringRecord,
) -> std::result::Result<EnrollmentRow, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if record.len() > columns.width {
        problems.push((
            "".to_owned(),
            format!("{} cells, the header has {}", record.len(), columns.width),
        ));
    }
    let category_name = columns.get(record, 1);
    let category = match category_value(&category_name.to_ascii_uppercase()) {
        Some(value) => value,
        None => {
            problems.push((
                "category".to_owned(),
                format!(
                    "unknown category {category_name:?}, expected one of {}",
                    Category::expected()
                ),
            ));
            0
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(EnrollmentRow {
        member_id: columns.get(record, 0).to_owned(),
        category,
        effective_date: columns.get(record, 2).to_owned(),
        product_code: columns.get(record, 3).to_owned(),
        period_start: columns.get(record, 4).to_owned(),
        premium: columns.get(record, 5).to_owned(),
    })
}

/// Ends every line with LF alone and turns every empty line into a line holding one space, so that the
/// csv reader's line numbers are those of the file: it gives a record the line where reading began,
/// which after a skipped empty line, or after the CR of a CRLF, is the line before. A one-space line
/// is a record (skipped as a blank row).
pub struct BlankLinesVisible<R> {
    input: R,
    line: Vec<u8>,
    at: usize,
}

impl<R: BufRead> BlankLinesVisible<R> {
    pub fn new(input: R) -> Self {
        BlankLinesVisible {
            input,
            line: Vec::new(),
            at: 0,
        }
    }
}

impl<R: BufRead> Read for BlankLinesVisible<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.line.len() {
            self.line.clear();
            self.at = 0;
            if self.input.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(0);
            }
            if self.line.ends_with(b"\r\n") {
                self.line.truncate(self.line.len() - 2);
                self.line.push(b'\n');
            }
            if self.line == b"\n" {
                self.line.insert(0, b' ');
            }
        }
        let n = out.len().min(self.line.len() - self.at);
        out[..n].copy_from_slice(&self.line[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What reading a roster gave: the CSV line of every row sent (index = stream position - 1) and the
/// rows refused locally.
#[derive(Debug, Default)]
pub struct RosterRead {
    pub lines: Vec<u64>,
    pub refused: Vec<RowProblem>,
}

/// Reads a roster and hands every convertible row with its line number to `send`, which returns
/// false to stop (the stream is gone). Lines count from 1 for the header; blank lines are skipped.
pub fn read_roster<R: BufRead>(input: R, mut send: impl FnMut(u64, EnrollmentRow) -> bool) -> Result<RosterRead> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(BlankLinesVisible::new(input));
    let header = reader.byte_headers().map_err(|e| fail(format!("line 1: {e}")))?.clone();
    let header =
        csv::StringRecord::from_byte_record(header).map_err(|_| fail("line 1: the header is not valid UTF-8"))?;
    let columns = Columns::from_header(&header).map_err(|e| fail(format!("line 1: {e}")))?;
    let mut read = RosterRead::default();
    let mut bytes = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut bytes) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                return Err(fail(format!("line {line}: {e}")));
            }
        }
        let line = bytes.position().map(|p| p.line()).unwrap_or(0);
        let record = match csv::StringRecord::from_byte_record(bytes.clone()) {
            Ok(record) => record,
            Err(_) => {
                read.refused.push(RowProblem {
                    line,
                    problems: vec![(String::new(), "not valid UTF-8".to_owned())],
                });
                continue;
            }
        };
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        match row_from_record(&columns, &record) {
            Ok(row) => {
                read.lines.push(line);
                if !send(line, row) {
                    break;
                }
            }
            Err(problems) => read.refused.push(RowProblem { line, problems }),
        }
    }
    Ok(read)
}

fn problem_text(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, message)| {
            if field.is_empty() {
                message.clone()
            } else {
                format!("{field}: {message}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn import(channel: Channel, path: &Path) -> Result<ExitCode> {
    let file = File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let (tx, rx) = mpsc::channel::<EnrollmentRow>(256);
    // The stream ends only once the whole file has been read without error: if reading fails half
    // way, the call is cancelled instead of ending normally with part of the roster.
    let end_of_stream = tx.clone();
    let mut reader =
        tokio::task::spawn_blocking(move || read_roster(BufReader::new(file), |_, row| tx.blocking_send(row).is_ok()));
    let mut client = MemberServiceClient::new(channel);
    let mut call = Box::pin(client.enroll(ReceiverStream::new(rx)));
    let early = tokio::select! {
        read = &mut reader => Err(read),
        // The server answered before the end of the stream: it failed the call.
        response = &mut call => Ok(response),
    };
    let (read, response) = match early {
        Err(read) => (read, Ok(call)),
        Ok(response) => {
            // Dropping the call drops the stream's receiver, so a reader waiting to send stops.
            drop(call);
            (reader.await, Err(response))
        }
    };
    let read = read
        .map_err(|e| fail(format!("reading {}: {e}", path.display())))?
        .map_err(|e| fail(format!("{}: {e} (the import was cancelled)", path.display())))?;
    let response = match response {
        // The whole file was read: end the stream and wait for the summary.
        Ok(call) => {
            drop(end_of_stream);
            call.await
        }
        Err(early) => early,
    };
    let summary = response.map_err(|s| rpc_error("Enroll", &s))?.into_inner();

    let mut errors: BTreeMap<u64, String> = BTreeMap::new();
    for r in &read.refused {
        errors.insert(r.line, format!("not sent: {}", problem_text(&r.problems)));
    }
    let mut unmapped = Vec::new();
    for e in &summary.errors {
        let text = problem_text(
            &e.violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect::<Vec<_>>(),
        );
        let text = if text.is_empty() { "refused".to_owned() } else { text };
        match usize::try_from(e.row)
            .ok()
            .and_then(|row| row.checked_sub(1))
            .and_then(|i| read.lines.get(i))
        {
            Some(line) => {
                errors.insert(*line, text);
            }
            None => unmapped.push(format!("stream row {}: {text}", e.row)),
        }
    }

    let rows_read = read.lines.len() + read.refused.len();
    crate::outln!("roster {}", path.display());
    let mut t = Table::new(&[("", Align::Left), ("", Align::Right)]);
    t.row(["rows read".to_owned(), rows_read.to_string()]);
    t.row(["refused locally, not sent".to_owned(), read.refused.len().to_string()]);
    t.row(["sent".to_owned(), read.lines.len().to_string()]);
    t.row(["received by the server".to_owned(), summary.rows.to_string()]);
    t.row(["accepted".to_owned(), summary.rows_accepted.to_string()]);
    t.row(["enrollments".to_owned(), summary.enrollments.to_string()]);
    t.row(["category changes".to_owned(), summary.category_changes.to_string()]);
    t.row(["refused by the server".to_owned(), summary.errors.len().to_string()]);
    for line in t.render().lines().skip(1) {
        crate::outln!("  {line}");
    }
    if summary.rows != read.lines.len() as u64 {
        crate::outln!(
            "warning: {} rows were sent but the server counted {}",
            read.lines.len(),
            summary.rows
        );
    }
    if !errors.is_empty() || !unmapped.is_empty() {
        crate::outln!("errors:");
        for (line, text) in &errors {
            crate::outln!("  line {line}: {text}");
        }
        for text in &unmapped {
            crate::outln!("  {text}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(channel: Channel, member_id: &str, as_of: Option<&str>) -> Result<ExitCode> {
    let mut client = MemberServiceClient::new(channel);
    let member = client
        .get_member(GetMemberRequest {
            member_id: member_id.to_owned(),
            as_of: as_of.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| rpc_error("GetMember", &s))?
        .into_inner();
    print_member(&member, as_of);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use claims::proto::Category as C;

    fn read(text: &str) -> (Vec<(u64, EnrollmentRow)>, RosterRead) {
        let mut rows = Vec::new();
        let read = read_roster(text.as_bytes(), |line, row| {
            rows.push((line, row));
            true
        })
        .unwrap();
        (rows, read)
    }

    #[test]
    fn rows_are_converted_with_their_line_numbers() {
        let text = "member_id,category,effective_date,product_code,period_start,premium\n\
                    M1,DIBAO,2022-01-01,cixi-medical-assistance,2022-01-01,\n\
                    M1,,,cixi-major-illness-topup,2022-01-01,\n\
                    \r\n\
                    M2, at_risk ,2020-01-01,zhongning-anti-poverty,2020-04-26,60.00\n\
                    M3,NOPE,2020-01-01,,,\n\
                    M4,DESTITUTE,2022-07-01\n";
        let (rows, read) = read(text);
        assert_eq!(read.lines, vec![2, 3, 5, 7]);
        assert_eq!(rows.iter().map(|(l, _)| *l).collect::<Vec<_>>(), read.lines);
        assert_eq!(
            rows[0].1,
            EnrollmentRow {
                member_id: "M1".into(),
                category: C::Dibao as i32,
                effective_date: "2022-01-01".into(),
                product_code: "cixi-medical-assistance".into(),
                period_start: "2022-01-01".into(),
                premium: String::new(),
            }
        );
        assert_eq!(rows[1].1.category, 0);
        assert_eq!(rows[1].1.product_code, "cixi-major-illness-topup");
        assert_eq!(rows[2].1.category, C::AtRisk as i32);
        assert_eq!(rows[2].1.premium, "60.00");
        // A short row: the missing cells are empty.
        assert_eq!(rows[3].1.category, C::Destitute as i32);
        assert_eq!(rows[3].1.product_code, "");
        assert_eq!(read.refused.len(), 1);
        assert_eq!(read.refused[0].line, 6);
        assert_eq!(read.refused[0].problems[0].0, "category");
        assert!(read.refused[0].problems[0].1.contains("\"NOPE\""));
    }

    #[test]
    fn columns_by_name_in_any_order_and_optional() {
        let (rows, read) = read("premium,member_id\n12.50,M9\n");
        assert!(read.refused.is_empty());
        assert_eq!(rows[0].1.member_id, "M9");
        assert_eq!(rows[0].1.premium, "12.50");
        assert_eq!(rows[0].1.category, 0);
    }

    #[test]
    fn bad_headers_and_rows() {
        assert!(read_roster("member,category\n".as_bytes(), |_, _| true)
            .unwrap_err()
            .to_string()
            .contains("unknown column(s) \"member\""));
        assert!(read_roster("category\nDIBAO\n".as_bytes(), |_, _| true)
            .unwrap_err()
            .to_string()
            .contains("no member_id column"));
        let (_, read) = read("member_id,category\nM1,DIBAO,extra\n");
        assert_eq!(read.refused[0].line, 2);
        assert!(read.refused[0].problems[0].1.contains("3 cells"));
    }

    #[test]
    fn crlf_files_keep_line_numbers_right() {
        let (rows, read) = read("member_id,category\r\nM1,DIBAO\r\n\r\nM2,NOPE\r\nM3,AT_RISK\r\n");
        assert_eq!(read.lines, vec![2, 5]);
        assert_eq!(read.refused[0].line, 4);
        assert_eq!(rows[1].1.member_id, "M3");
    }

    #[test]
    fn quoted_cells_spanning_lines_keep_line_numbers_right() {
        let (rows, read) = read("member_id,premium\n\n\n\"M1\",\"1.00\"\nM2,\"2\n\n\"\n\nM3,\n");
        assert_eq!(read.lines, vec![4, 5, 9]);
        assert_eq!(rows[1].1.premium, "2");
    }

    #[test]
    fn sending_stops_when_the_stream_is_gone() {
        let mut sent = 0;
        let read = read_roster("member_id\nA\nB\nC\n".as_bytes(), |_, _| {
            sent += 1;
            false
        })
        .unwrap();
        assert_eq!(sent, 1);
        assert_eq!(read.lines, vec![2]);
    }
}
