//! Compiles `understudy.proto` with protox (a pure-Rust protobuf compiler), so no
//! system `protoc` is needed, then generates prost messages and tonic stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=understudy.proto");
    let fds = protox::compile(["understudy.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small initial per-stream buffers (see src/codec.rs).
        .codec_path("crate::codec::CompactCodec")
        .compile_fds(fds)?;
    Ok(())
}
