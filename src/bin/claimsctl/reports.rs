//! `loss-ratio` (with `--watch`) and `export`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use claims::api::convert::category_text;
use claims::proto::report_service_client::ReportServiceClient;
use claims::proto::{ListSettlementsRequest, LossRatio, LossRatioRequest, StoredSettlement};
use tonic::transport::Channel;

use crate::show::percent;
use crate::table::{Align, Table};
use crate::{fail, rpc_error, Result};

fn loss_ratio_table() -> Table {
    Table::new(&[
        ("product", Align::Left),
        ("period", Align::Left),
        ("written premium", Align::Right),
        ("paid", Align::Right),
        ("paid claims", Align::Right),
        ("members", Align::Right),
        ("loss ratio", Align::Right),
    ])
}

fn loss_ratio_cells(r: &LossRatio) -> [String; 7] {
    [
        r.product_code.clone(),
        format!("{}..{}", r.period_start, r.period_end),
        r.written_premium.clone(),
        r.paid.clone(),
        r.paid_claims.to_string(),
        r.enrolled_members.to_string(),
        percent(&r.loss_ratio),
    ]
}

/// One line of `--watch`: the time of the change (UTC) and the figures, in fixed-width columns.
fn watch_line(now: &str, r: &LossRatio) -> String {
    let c = loss_ratio_cells(r);
    format!(
        "{now}  {:<36}  {:<22}  premium {:>14}  paid {:>14}  claims {:>7}  members {:>8}  loss ratio {:>9}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    )
}

fn now_utc() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_default()
}

pub async fn loss_ratio(channel: Channel, request: LossRatioRequest, watch: bool) -> Result<ExitCode> {
    let alerting = !request.alert_above.is_empty();
    let mut client = ReportServiceClient::new(channel);
    if !watch {
        let response = client
            .get_loss_ratio(request)
            .await
            .map_err(|s| rpc_error("GetLossRatio", &s))?
            .into_inner();
        if response.ratios.is_empty() {
            crate::outln!("no product period matches");
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = loss_ratio_table();
        for r in &response.ratios {
            t.row(loss_ratio_cells(r));
        }
        t.print();
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = client
        .watch_loss_ratio(request)
        .await
        .map_err(|s| rpc_error("WatchLossRatio", &s))?
        .into_inner();
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(r)) => {
                    let mark = match (alerting, r.above_threshold) {
                        (false, _) => "",
                        (true, true) => "ALERT       ",
                        (true, false) => "below       ",
                    };
                    crate::outln!("{mark}{}", watch_line(&now_utc(), &r))
                }
                Ok(None) => {
                    eprintln!("the server ended the watch");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(status) => return Err(rpc_error("WatchLossRatio stream", &status)),
            },
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The CSV columns of `export`.
pub const EXPORT_HEADER: [&str; 14] = [
    "sequence",
    "settled_at",
    "hospital_id",
    "claim_id",
    "member_id",
    "service_date",
    "category",
    "total_cost",
    "upstream_total",
    "payout_total",
    "out_of_pocket",
    "reversed",
    "reversed_at",
    "layers",
];

/// One CSV row of a stored settlement; `layers` is `code:payout;code:payout` in layer order.
pub fn export_row(s: &StoredSettlement) -> [String; 14] {
    let body = s.settlement.clone().unwrap_or_default();
    let layers = body
        .layers
        .iter()
        .map(|l| format!("{}:{}", l.product_code, l.payout))
        .collect::<Vec<_>>()
        .join(";");
    [
        s.sequence.to_string(),
        s.settled_at.clone(),
        body.hospital_id,
        body.claim_id,
        body.member_id,
        body.service_date,
        category_text(body.category),
        body.total_cost,
        body.upstream_total,
        body.payout_total,
        body.out_of_pocket,
        s.reversed.to_string(),
        s.reversed_at.clone(),
        layers,
    ]
}

pub async fn export(channel: Channel, request: ListSettlementsRequest, out: Option<&Path>) -> Result<ExitCode> {
    let sink: Box<dyn Write> = match out {
        Some(path) => Box::new(File::create(path).map_err(|e| fail(format!("{}: {e}", path.display())))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = csv::Writer::from_writer(BufWriter::new(sink));
    let write_error = |e: csv::Error| {
        if matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
            // The reader of standard output has gone (`claimsctl export | head`): stop quietly.
            std::process::exit(0);
        }
        fail(format!("writing the CSV: {e}"))
    };
    writer.write_record(EXPORT_HEADER).map_err(write_error)?;

    let mut client = ReportServiceClient::new(channel);
    let mut stream = client
        .export_settlements(request)
        .await
        .map_err(|s| rpc_error("ExportSettlements", &s))?
        .into_inner();
    let mut rows = 0u64;
    let result = loop {
        match stream.message().await {
            Ok(Some(s)) => {
                writer.write_record(export_row(&s)).map_err(write_error)?;
                rows += 1;
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(rpc_error("the ExportSettlements stream failed", &status)),
        }
    };
    writer.flush().map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        fail(format!("writing the CSV: {e}"))
    })?;
    match result {
        Ok(()) => {
            let to = out
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "standard output".to_owned());
            eprintln!("{rows} settlement(s) exported to {to}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{rows} settlement(s) written before the failure; the export is incomplete");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claims::proto::{Category, LayerPayout, Settlement};

    #[test]
    fn export_rows() {
        let s = StoredSettlement {
            settlement: Some(Settlement {
                claim_id: "H1-0001".into(),
                hospital_id: "H1".into(),
                member_id: "M1".into(),
                service_date: "2022-03-10".into(),
                category: Category::Dibao as i32,
                total_cost: "116500.00".into(),
                upstream_total: "60000.00".into(),
                payout_total: "25000.00".into(),
                out_of_pocket: "31500.00".into(),
                layers: vec![
                    LayerPayout {
                        product_code: "cixi-medical-assistance".into(),
                        payout: "16000.00".into(),
                        ..Default::default()
                    },
                    LayerPayout {
                        product_code: "cixi-tianyi-yongning-bao".into(),
                        payout: "9000.00".into(),
                        ..Default::default()
                    },
                ],
                reasons: vec![],
            }),
            sequence: 7,
            settled_at: "2022-03-10T08:00:00Z".into(),
            reversed: false,
            reversed_at: String::new(),
        };
        let row = export_row(&s);
        assert_eq!(row[0], "7");
        assert_eq!(row[6], "DIBAO");
        assert_eq!(row[11], "false");
        assert_eq!(
            row[13],
            "cixi-medical-assistance:16000.00;cixi-tianyi-yongning-bao:9000.00"
        );
    }

    #[test]
    fn watch_lines_show_the_percentage() {
        let r = LossRatio {
            product_code: "cixi-low-income-farmer-insurance".into(),
            period_start: "2020-08-15".into(),
            period_end: "2021-08-14".into(),
            written_premium: "4125000.00".into(),
            paid: "4875423.54".into(),
            paid_claims: 3,
            enrolled_members: 13750,
            loss_ratio: "1.1819".into(),
            above_threshold: false,
        };
        let line = watch_line("T", &r);
        assert!(line.ends_with("loss ratio   118.19%"), "{line}");
        assert!(line.starts_with("T  cixi-low-income-farmer-insurance"), "{line}");
    }
}
