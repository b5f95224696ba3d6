//! Compiles every `.proto` file under `<workspace>/proto` with `protox` (no system
//! `protoc`), generates prost messages plus tonic clients and servers, and writes
//! the encoded `FileDescriptorSet` of TensorFlow's and TF Serving's files to
//! `$OUT_DIR/oxserve_descriptor.bin`. oxserve's own files (`proto/oxserve/`) get
//! prost messages only.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // Names relative to the include root, as `import` statements spell them.
    let names = files
        .iter()
        .map(|f| f.strip_prefix(&proto_root).map(Path::to_path_buf))
        .collect::<Result<Vec<_>, _>>()?;
    // oxserve's internal decoding views are not part of the protocol: kept out of the descriptor
    // set that gRPC reflection serves and the REST JSON mapping reads.
    let (own, names): (Vec<_>, Vec<_>) = names.into_iter().partition(|n| n.starts_with("oxserve"));

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&names)?;

    // Imports included, so the set is self-contained (google/protobuf/*.proto too):
    // usable as-is by prost-reflect and by gRPC server reflection.
    fs::write(
        out_dir.join("oxserve_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut config = tonic_prost_build::Config::new();
    // `bytes` fields (tensor_content, string_val, ...) become `bytes::Bytes`, so
    // decoding a request buffer does not copy them.
    config.bytes(["."]);
    // `impl prost::Name` for every message, with TensorFlow's Any type URL prefix.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        // prost's codec, with INVALID_ARGUMENT for requests that do not parse (see codec.rs).
        .codec_path("crate::codec::ServingCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;

    if !own.is_empty() {
        let mut compiler = protox::Compiler::new([&proto_root])?;
        compiler.open_files(&own)?;
        let mut config = tonic_prost_build::Config::new();
        // Decoded from a `Bytes` buffer, a `bytes` field is a view of it, not a copy.
        config.bytes(["."]);
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(false)
            .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    }
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
