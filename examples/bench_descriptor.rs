//! Writes the gateway's encoded descriptor set (with imports and the
//! `google.api.http` options) to a file, for Envoy's gRPC-JSON reverse
//! transcoder. Part of the benchmark harness in `bench/`.
//!
//! Usage: `cargo run --release --example bench_descriptor -- OUT.pb`

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/out/runstates.pb".to_owned());
    if let Some(dir) = std::path::Path::new(&out).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, runstate_gateway::pb::FILE_DESCRIPTOR_SET)?;
    println!(
        "{out}: {} bytes",
        runstate_gateway::pb::FILE_DESCRIPTOR_SET.len()
    );
    Ok(())
}
