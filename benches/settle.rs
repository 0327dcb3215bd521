//! Settling one claim with 10 line items through the 4-layer Cixi cascade of worked example A.
//!
//! Run: `cargo bench --no-default-features --bench settle`

use std::hint::black_box;
use std::path::Path;

use claims::domain::{
    settle, Accumulators, Catalogue, Category, Claim, ClaimDraft, LineDraft, Member, MemberId, Terms, UpstreamDraft,
};
use criterion::{criterion_group, criterion_main, Criterion};

const FILES: [&str; 4] = [
    "cixi-medical-assistance_2022-01-01.toml",
    "cixi-major-illness-topup_2022-01-01.toml",
    "cixi-tianyi-yongning-bao_2022-01-01.toml",
    "cixi-burden-stop-loss_2022-01-01.toml",
];

fn setup() -> Result<(Catalogue, Member, Claim, Accumulators), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/terms");
    let mut catalogue = Catalogue::new();
    for file in FILES {
        catalogue.apply(Terms::from_toml(&std::fs::read_to_string(dir.join(file))?)?)?;
    }
    let mut member = Member::new(MemberId::parse("M1")?);
    member
        .categories
        .set(claims::domain::parse_date("2022-01-01")?, Category::Dibao);
    for v in catalogue.iter() {
        member
            .enrollments
            .insert(v.terms.key(), v.terms.product.premium_per_member);
    }
    let classes = [
        "IN_SCOPE",
        "IN_SCOPE",
        "IN_SCOPE",
        "IN_SCOPE",
        "B_SELF_PAY",
        "B_SELF_PAY",
        "OUT_OF_CATALOGUE",
        "OUT_OF_CATALOGUE",
        "OUT_OF_CATALOGUE",
        "NON_COMPLIANT",
    ];
    let draft = ClaimDraft {
        claim_id: "H1-0001".into(),
        hospital_id: "H1".into(),
        member_id: "M1".into(),
        service_date: "2022-03-10".into(),
        visit_kind: "INPATIENT".into(),
        lines: classes
            .iter()
            .enumerate()
            .map(|(i, class)| LineDraft {
                code: format!("item-{i}"),
                expense_class: (*class).into(),
                amount: format!("{}.{:02}", 3_000 + i * 1_111, i * 7),
            })
            .collect(),
        upstream: vec![UpstreamDraft {
            kind: "BASIC".into(),
            amount: "6000.00".into(),
        }],
        ..ClaimDraft::default()
    };
    let claim = Claim::parse(&draft)?;
    // Accumulators part-used by earlier claims, so deductibles, bands and caps all come into play.
    let mut acc = Accumulators::new();
    let earlier = settle(&catalogue, &member, &claim, &acc);
    acc.apply(&earlier.changes);
    Ok((catalogue, member, claim, acc))
}

fn bench(c: &mut Criterion) {
    let (catalogue, member, claim, acc) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench setup failed: {e}");
            std::process::exit(1);
        }
    };
    c.bench_function("settle 10 lines through 4 layers", |b| {
        b.iter(|| {
            settle(
                black_box(&catalogue),
                black_box(&member),
                black_box(&claim),
                black_box(&acc),
            )
        })
    });
    let draft = claim.to_draft();
    c.bench_function("parse and validate a 10-line claim", |b| {
        b.iter(|| Claim::parse(black_box(&draft)))
    });
    // What the ledger stores of each claim (`Ledger::enqueue_settle`): its amounts as text. JSON
    // comes with the server feature.
    #[cfg(feature = "server")]
    c.bench_function("a 10-line claim's canonical JSON", |b| {
        b.iter(|| serde_json::to_string(&black_box(&claim).to_draft()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
