//! Compiles `proto/claims/v1/*.proto` with protox (pure Rust, no protoc needed) and writes the file
//! descriptor set that server reflection serves.

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/claims/v1/types.proto",
        "proto/claims/v1/settlement.proto",
        "proto/claims/v1/terms.proto",
        "proto/claims/v1/member.proto",
        "proto/claims/v1/report.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // The pure domain build (`--no-default-features`) needs no generated code.
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return Ok(());
    }
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("claims_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
