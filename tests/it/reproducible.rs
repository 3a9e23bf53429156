//! The same inputs give the same digests, from any directory.

use crate::support::{build_ok, copy_fixture, heavy, scratch, variant};

#[test]
fn same_build_in_two_directories_gives_identical_digests() {
    let _heavy = heavy();
    let a = scratch("repro-a");
    let b = scratch("repro-b")
        .join("a")
        .join("much")
        .join("deeper")
        .join("checkout");
    copy_fixture("tiny", &a.join("tiny"));
    copy_fixture("tiny", &b.join("tiny"));
    let args = ["--variants", "sqlite,postgres", "--version", "2.0.0"];
    let ra = build_ok(&a.join("tiny"), &a.join("out"), &args, &[]);
    let rb = build_ok(&b.join("tiny"), &b.join("out"), &args, &[]);
    for name in ["sqlite", "postgres"] {
        let (va, vb) = (variant(&ra, name), variant(&rb, name));
        assert!(va["digest"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(
            va["digest"],
            vb["digest"],
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
        assert_eq!(
            va["platforms"][0]["binary_digests"], vb["platforms"][0]["binary_digests"],
            "{name}: the binaries themselves differ"
        );
    }
    assert_ne!(
        variant(&ra, "sqlite")["digest"],
        variant(&ra, "postgres")["digest"]
    );
    // The layouts hold the same blobs, byte for byte.
    let list = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d.join("out/blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&a), list(&b));
    assert_eq!(
        std::fs::read(a.join("out/index.json")).unwrap(),
        std::fs::read(b.join("out/index.json")).unwrap()
    );
}

#[test]
fn a_different_epoch_changes_the_digest() {
    let _heavy = heavy();
    let dir = scratch("repro-epoch");
    copy_fixture("tiny", &dir.join("tiny"));
    let args = [
        "--variants",
        "sqlite",
        "--version",
        "2.0.0",
        "--no-compress",
    ];
    let r1 = build_ok(&dir.join("tiny"), &dir.join("out1"), &args, &[]);
    let r2 = build_ok(
        &dir.join("tiny"),
        &dir.join("out2"),
        &args,
        &[("SOURCE_DATE_EPOCH", "1700000001")],
    );
    assert_ne!(
        variant(&r1, "sqlite")["digest"],
        variant(&r2, "sqlite")["digest"]
    );
    assert_eq!(r2["created"], "2023-11-14T22:13:21Z");
}
