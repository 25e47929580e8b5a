//! Compiles the `.proto` files with `protox` (pure Rust), so a fresh machine needs no `protoc`:
//! `courier/v1/*.proto` (the envelopes) with `prost-build`, `courier/admin/v1/admin.proto` (the
//! admin API) with `tonic-prost-build`, whose encoded descriptors are also written out for the
//! server's reflection service.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let envelopes = ["courier/v1/envelope.proto"];
    let admin = ["courier/admin/v1/admin.proto"];
    for p in envelopes.iter().chain(&admin) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(envelopes, ["."])?;
    prost_build::Config::new().compile_fds(fds)?;

    let fds = protox::compile(admin, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("courier_admin_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // `courierctl --json` prints the answers as they are.
        .type_attribute(".courier.admin.v1", "#[derive(serde::Serialize)]")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
