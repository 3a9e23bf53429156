//! Golden digests: a fixed input must give these exact bytes forever. A failure here means a
//! dependency (flate2's backend, tar, serde_json) or our own code moved image digests: every
//! user's images would change. Only update the values on purpose, and say so in the changelog.

use std::collections::BTreeMap;

use galley::oci::image::{derive_config, manifest, AddedLayer, ImageSettings};
use galley::oci::layer::{write_layer, Entry};
use galley::oci::{Descriptor, PlatformSpec, MEDIA_CONFIG, MEDIA_LAYER_GZIP};

use crate::support::scratch;

const GOLDEN_LAYER_DIGEST: &str =
    "sha256:c30284d1561872c7ce12bf44ad8e64ac8e705ab542a335f24cc23249f44ea624";
const GOLDEN_LAYER_DIFF_ID: &str =
    "sha256:1d0c179c164a5bf2766a362ce670ec423e821e6505a83dce111640466c934350";
const GOLDEN_CONFIG_DIGEST: &str =
    "sha256:975cfb27a8d22c3e66ce37b0328f3c1bdab3525f6cb20e7886214ed2d908681b";
const GOLDEN_MANIFEST_DIGEST: &str =
    "sha256:d0765a0fb9b30def3740872e40b2eed7f5efbcfaf18f9affa242912417fa9510";

fn fixed_binary() -> Vec<u8> {
    // 300 KiB of structured, partly compressible bytes: a stand-in for a binary.
    (0..300 * 1024u32)
        .map(|i| {
            if i % 3 == 0 {
                (i / 7 % 256) as u8
            } else {
                (i.wrapping_mul(2_654_435_761) >> 24) as u8
            }
        })
        .collect()
}

#[test]
fn fixed_layer_config_and_manifest_have_golden_digests() {
    let dir = scratch("golden");
    let src = dir.join("svc");
    std::fs::write(&src, fixed_binary()).unwrap();
    let entries = [
        Entry::dir("app", 0o755),
        Entry::file("app/svc", 0o755, &src),
    ];
    let layer = write_layer(&entries, 1_700_000_000, &dir.join("blobs")).unwrap();

    let base = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#;
    let settings = ImageSettings {
        workdir: "/app".into(),
        entrypoint: vec!["/app/svc".into()],
        cmd: None,
        expose: vec![8080],
        env: [("RUST_LOG".to_string(), "info".to_string())].into(),
        labels: [(
            "org.opencontainers.image.title".to_string(),
            "svc".to_string(),
        )]
        .into(),
        user: None,
    };
    let platform = PlatformSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    };
    let added = AddedLayer {
        diff_id: &layer.diff_id,
        created_by: "galley: COPY svc /app/svc".into(),
    };
    let config = derive_config(
        base.as_bytes(),
        0,
        &platform,
        &settings,
        &added,
        "2023-11-14T22:13:20Z",
    )
    .unwrap();
    let config_digest = galley::oci::Digest::of(&config);
    let annotations: BTreeMap<String, String> = [(
        "org.opencontainers.image.version".to_string(),
        "1.0.0".to_string(),
    )]
    .into();
    let (_, manifest_bytes) = manifest(
        Descriptor::new(MEDIA_CONFIG, config_digest.clone(), config.len() as u64),
        vec![Descriptor::new(
            MEDIA_LAYER_GZIP,
            layer.digest.clone(),
            layer.size,
        )],
        annotations,
    )
    .unwrap();
    let manifest_digest = galley::oci::Digest::of(&manifest_bytes);

    let got = format!(
        "layer {}\ndiff_id {}\nconfig {}\nmanifest {}",
        layer.digest, layer.diff_id, config_digest, manifest_digest
    );
    let want = format!("layer {GOLDEN_LAYER_DIGEST}\ndiff_id {GOLDEN_LAYER_DIFF_ID}\nconfig {GOLDEN_CONFIG_DIGEST}\nmanifest {GOLDEN_MANIFEST_DIGEST}");
    assert_eq!(
        got, want,
        "image digests moved: a dependency or galley changed the bytes of layers or JSON"
    );

    // The blob file is named by its digest and holds exactly the hashed bytes.
    let blob = std::fs::read(dir.join("blobs").join(layer.digest.hex())).unwrap();
    assert_eq!(galley::oci::Digest::of(&blob), layer.digest);
    assert_eq!(blob.len() as u64, layer.size);
    // An independent gunzip agrees with the diff_id computed in the same streaming pass.
    let gz = std::fs::File::open(dir.join("blobs").join(layer.digest.hex())).unwrap();
    let tar = std::process::Command::new("zcat")
        .stdin(gz)
        .output()
        .unwrap();
    assert!(tar.status.success());
    assert_eq!(galley::oci::Digest::of(&tar.stdout), layer.diff_id);
    assert_eq!(tar.stdout.len() as u64, layer.tar_size);
}

#[test]
fn layer_tar_has_fixed_metadata() {
    let dir = scratch("golden-meta");
    let src = dir.join("svc");
    std::fs::write(&src, b"binary").unwrap();
    // Give the source file odd metadata: none of it may reach the layer.
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let layer = write_layer(
        &[Entry::file("app/svc", 0o755, &src)],
        1_700_000_000,
        &dir.join("blobs"),
    )
    .unwrap();
    let gz = std::fs::File::open(dir.join("blobs").join(layer.digest.hex())).unwrap();
    let out = std::process::Command::new("tar")
        .env("TZ", "UTC")
        .arg("--numeric-owner")
        .arg("-tvzf")
        .arg("-")
        .stdin(gz)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines[0].starts_with("drwxr-xr-x 0/0") && lines[0].ends_with("2023-11-14 22:13 app/"),
        "{listing}"
    );
    assert!(
        lines[1].starts_with("-rwxr-xr-x 0/0") && lines[1].ends_with("2023-11-14 22:13 app/svc"),
        "{listing}"
    );
}
