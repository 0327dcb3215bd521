//! Compiles `proto/claims/v1/*.proto` with protox (pure Rust, no protoc needed) and writes the file
//! descriptor sets that server reflection serves (BenchService's apart: it is served only on demand).

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/claims/v1/types.proto",
        "proto/claims/v1/settlement.proto",
        "proto/claims/v1/terms.proto",
        "proto/claims/v1/member.proto",
        "proto/claims/v1/report.proto",
        "proto/claims/v1/bench.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds the migrations when the crate compiles; a new file must rebuild it.
    println!("cargo:rerun-if-changed=migrations");
    // The pure domain build (`--no-default-features`) needs no generated code.
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return Ok(());
    }
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // BenchService is served only with `claimsd --bench`: its file goes into a descriptor set of its
    // own, which reflection serves only then.
    let (bench, service): (Vec<_>, Vec<_>) = fds
        .file
        .iter()
        .cloned()
        .partition(|f| f.name() == "claims/v1/bench.proto");
    let set = |file| protox::prost_reflect::prost_types::FileDescriptorSet { file }.encode_to_vec();
    std::fs::write(out_dir.join("claims_descriptor.bin"), set(service))?;
    std::fs::write(out_dir.join("claims_bench_descriptor.bin"), set(bench))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
