//! The realistic fixture: a multi-variant axum service with bundled SQLite, tokio-postgres and
//! mysql_async backends. All three variants are built, unpacked and run; the sqlite one serves
//! real requests from inside its image's root file system.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::{
    build_ok, chroot_run, galley, heavy, repo, require, run_ok, scratch, unpack, variant,
};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn authd_variants_build_and_the_sqlite_image_serves_requests() {
    let _heavy = heavy();
    require("pyspdxtools");
    require("sbomcheck");
    let dir = scratch("authd");
    let project = repo().join("fixtures/authd");
    let out = dir.join("out");
    let report = build_ok(
        &project,
        &out,
        &["--variants", "sqlite,postgres,mysql", "--version", "0.3.1"],
        &[],
    );
    assert_eq!(report["succeeded"], true, "{report}");
    assert!(
        report["revision"].as_str().is_some_and(|r| r.len() == 40),
        "a git checkout records its revision: {report}"
    );

    for (name, backend) in [
        ("sqlite", "sqlite"),
        ("postgres", "postgres"),
        ("mysql", "mysql"),
    ] {
        let v = variant(&report, name);
        assert_eq!(v["status"], "succeeded", "{v}");
        let bundle = unpack(&out, &format!("{name}-0.3.1"), &dir);
        assert_eq!(
            chroot_run(&bundle, &["/app/authd", "--version"]),
            format!("authd 0.3.1 ({backend})")
        );
    }
    let digests: std::collections::BTreeSet<&str> = ["sqlite", "postgres", "mysql"]
        .iter()
        .map(|n| variant(&report, n)["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 3, "each variant is a different image");

    // Each image carries its SBOM and provenance, checked by the SPDX project's validator and the
    // in-toto framework's bindings; each SBOM lists exactly its own backend's driver.
    for (name, has, lacks) in [
        ("sqlite", "rusqlite", "tokio-postgres"),
        ("postgres", "tokio-postgres", "rusqlite"),
        ("mysql", "mysql_async", "rusqlite"),
    ] {
        let v = variant(&report, name);
        let digest = v["digest"].as_str().unwrap();
        let attached: Vec<&str> = v["platforms"][0]["referrers"]
            .as_array()
            .unwrap_or_else(|| panic!("no referrers in {v}"))
            .iter()
            .map(|r| r["artifact_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            attached,
            ["application/spdx+json", "application/vnd.in-toto+json"],
            "{v}"
        );
        let tag = format!("{name}-0.3.1");
        let sbom = run_ok(
            galley()
                .arg("sbom")
                .arg(format!("oci:{}:{tag}", out.display())),
        )
        .stdout;
        let sbom_file = dir.join(format!("{name}.spdx.json"));
        std::fs::write(&sbom_file, &sbom).unwrap();
        run_ok(Command::new("pyspdxtools").arg("-i").arg(&sbom_file));
        // The NTIA minimum elements, by the SPDX project's checker: every crate has a name,
        // version, identifier and supplier (crates.io, or the fixture's authors for authd).
        let ntia = run_ok(
            Command::new("sbomcheck")
                .args(["--comply", "ntia", "--output", "json"])
                .arg(&sbom_file),
        );
        let ntia: serde_json::Value = serde_json::from_slice(&ntia.stdout).unwrap();
        assert_eq!(ntia["isNtiaConformant"], true, "{name}: {ntia}");
        let doc: serde_json::Value = serde_json::from_slice(&sbom).unwrap();
        let crates: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(crates[0], "authd", "the binary's crate comes first");
        assert!(crates.contains(&has), "{name}: {crates:?}");
        assert!(!crates.contains(&lacks), "{name}: {crates:?}");
        // Build-time only crates are not in the binary.
        assert!(!crates.contains(&"cc"), "{name}: {crates:?}");

        let prov = run_ok(galley().args(["sbom", "--provenance"]).arg(&out).arg(&tag)).stdout;
        let prov_file = dir.join(format!("{name}.intoto.json"));
        std::fs::write(&prov_file, &prov).unwrap();
        let checked = run_ok(
            Command::new("python3")
                .arg(repo().join("tests/tools/check_provenance.py"))
                .arg(&prov_file),
        );
        assert_eq!(
            String::from_utf8_lossy(&checked.stdout).trim(),
            digest.trim_start_matches("sha256:"),
            "the provenance names the image it was attached to"
        );
        let p: serde_json::Value = serde_json::from_slice(&prov).unwrap();
        let params = &p["predicate"]["buildDefinition"]["externalParameters"];
        assert_eq!(params["variant"], name, "{p}");
        assert_eq!(params["features"], v["features"], "{p}");
    }

    // Serve from the sqlite image: the packed static binary, in the image's root, answering HTTP.
    let bundle = dir.join("bundle-sqlite-0.3.1");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/sbin/chroot")
        .arg(bundle.join("rootfs"))
        .arg("/app/authd")
        .env_clear()
        .env("AUTHD_LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let _server = Server(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "authd did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = http(
        port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains(r#"{"status":"ok","backend":"sqlite"}"#),
        "{health}"
    );
    let body = r#"{"user":"alice","password":"wonderland"}"#;
    let login = http(port, &format!("POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    assert!(
        login.starts_with("HTTP/1.1 200") && login.contains(r#""authenticated":true"#),
        "{login}"
    );
    let bad = r#"{"user":"alice","password":"nope"}"#;
    let denied = http(port, &format!("POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{bad}", bad.len()));
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
}
