//! Writes one deterministic layer holding FILE at app/FILE-NAME and prints its digests and sizes.
//! Used by benchmarks/layer-memory.sh to show that memory stays flat however large the file.
//!
//!     cargo run --release --example layer -- FILE OUT_DIR

use galley::oci::layer::{write_layer, Entry};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: layer FILE OUT_DIR");
    };
    let name = std::path::Path::new(&file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let layer = write_layer(
        &[Entry::file(&format!("app/{name}"), 0o755, &file)],
        1_700_000_000,
        std::path::Path::new(&out),
    )?;
    println!("{}", serde_json::to_string(&layer)?);
    Ok(())
}
