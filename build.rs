//! Compiles `proto/` with protox (no protoc needed) and generates tonic code,
//! after checking the protos and the translation tables against Graph's
//! definitions (`graph-metadata/runstates.xml`, see `build/csdl.rs`).
//!
//! The descriptor set for reflection is the compiler's own encoding: encoding
//! the decoded set again would drop custom options such as `google.api.http`.

use std::{env, fs, path::PathBuf};

#[allow(dead_code)]
#[path = "src/convert/schema.rs"]
mod schema;

#[path = "build/csdl.rs"]
mod csdl;

const CSDL: &str = "graph-metadata/runstates.xml";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed={CSDL}");
    println!("cargo:rerun-if-changed=src/convert/schema.rs");
    println!("cargo:rerun-if-changed=build");
    let files = [
        "proto/intune/runstates/v1/resources.proto",
        "proto/intune/runstates/v1/service.proto",
        "proto/google/longrunning/operations.proto",
    ];
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    let descriptors = compiler.file_descriptor_set();
    let xml = fs::read_to_string(CSDL).map_err(|e| format!("{CSDL}: {e}"))?;
    if let Err(problems) = csdl::check(&xml, &descriptors) {
        for problem in problems {
            println!("cargo::error={CSDL} disagrees with the gateway: {problem}");
        }
        return Ok(());
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("runstates_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-call buffers: see src/grpc/codec.rs.
        .codec_path("crate::grpc::codec::LeanCodec")
        // Per-item errors of batches and streams use tonic-types' Status.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
