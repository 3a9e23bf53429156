//! The fake registry's own tests: a tiny raw HTTP client, then skopeo as an independent client.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The first distribution error code of the body.
    fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
    /// The Location header as a request target (absolute URLs lose their scheme and host).
    fn location(&self) -> String {
        let loc = self.header("location").expect("a Location header");
        loc.strip_prefix("http://")
            .map(|l| &l[l.find('/').unwrap()..])
            .unwrap_or(loc)
            .to_string()
    }
}

/// One request on a fresh connection; Err when the connection breaks before a full response.
fn send(
    reg: &FakeRegistry,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut stream = TcpStream::connect(reg.addr()).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        reg.host(),
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(|e| e.to_string())?;
    raw_reply(stream)
}

fn raw_reply(mut stream: TcpStream) -> Result<Reply, String> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Asserts a distribution error reply.
#[track_caller]
fn assert_error(reply: &Reply, status: u16, code: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (status, code),
        "{body}"
    );
}

fn req(reg: &FakeRegistry, method: &str, target: &str, body: &[u8]) -> Reply {
    send(reg, method, target, &[], body).unwrap()
}

/// POST + PUT with the digest: a two-request monolithic upload.
fn push_blob(reg: &FakeRegistry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let post = req(reg, "POST", &format!("/v2/{repo}/blobs/uploads/"), b"");
    assert_eq!(post.status, 202);
    let put = req(
        reg,
        "PUT",
        &format!("{}&digest={digest}", post.location()),
        bytes,
    );
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    digest
}

fn image_manifest(config: &str, layers: &[&str]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|d| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1})).collect();
    let config = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1});
    serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}),
    )
    .unwrap()
}

#[test]
fn monolithic_push_then_head() {
    let reg = FakeRegistry::start(Faults::default());
    assert_eq!(req(&reg, "GET", "/v2/", b"").status, 200);
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    assert_eq!(post.status, 202);
    assert!(post
        .header("location")
        .unwrap()
        .starts_with(&format!("http://{}/v2/team/app/blobs/uploads/", reg.host())));
    assert!(post.location().contains("?_state="));
    assert_eq!(post.header("range"), Some("0-0"));
    assert!(post.header("docker-upload-uuid").is_some());

    let digest = sha256(b"hello layer");
    let put = req(
        &reg,
        "PUT",
        &format!("{}&digest={}", post.location(), digest.replace(':', "%3A")),
        b"hello layer",
    );
    assert_eq!(put.status, 201);
    assert_eq!(put.header("docker-content-digest"), Some(digest.as_str()));

    let head = req(&reg, "HEAD", &format!("/v2/team/app/blobs/{digest}"), b"");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("11"))
    );
    assert!(head.body.is_empty());
    assert_eq!(
        req(&reg, "GET", &format!("/v2/team/app/blobs/{digest}"), b"").body,
        b"hello layer"
    );
    let other = req(&reg, "HEAD", &format!("/v2/team/other/blobs/{digest}"), b"");
    assert_eq!(
        other.status, 404,
        "blobs are served only from the repositories they are linked into"
    );
    assert!(reg.repo_has_blob("team/app", &digest) && !reg.repo_has_blob("team/other", &digest));
    assert_eq!(reg.blob(&digest).unwrap(), b"hello layer");

    // Single-request monolithic upload, and a digest mismatch.
    let one = sha256(b"one shot");
    assert_eq!(
        req(
            &reg,
            "POST",
            &format!("/v2/team/app/blobs/uploads/?digest={one}"),
            b"one shot"
        )
        .status,
        201
    );
    let bad = req(
        &reg,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={one}"),
        b"other bytes",
    );
    assert_error(&bad, 400, "DIGEST_INVALID");
    let log = reg.requests();
    assert_eq!(
        (log[2].method.as_str(), log[2].body_len, log[2].status),
        ("PUT", 11, 201)
    );
    assert!(
        log[2].query.contains("_state=") && log[2].path.starts_with("/v2/team/app/blobs/uploads/")
    );
}

#[test]
fn chunked_patch_upload_and_session_errors() {
    let reg = FakeRegistry::start(Faults {
        relative_location: true,
        ..Faults::default()
    });
    let post = req(&reg, "POST", "/v2/library/busybox/blobs/uploads/", b"");
    assert!(post
        .header("location")
        .unwrap()
        .starts_with("/v2/library/busybox/blobs/uploads/"));
    let first = post.location();

    // A chunked PATCH, written by hand.
    let mut stream = TcpStream::connect(reg.addr()).unwrap();
    let patch = format!("PATCH {first} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
    stream.write_all(patch.as_bytes()).unwrap();
    let patched = raw_reply(stream).unwrap();
    assert_eq!(
        (patched.status, patched.header("range")),
        (202, Some("0-10"))
    );
    let second = patched.location();
    assert_ne!(first, second, "each PATCH hands out a new _state");

    let digest = sha256(b"hello world!");
    let dropped = req(
        &reg,
        "PUT",
        &format!("{}?digest={digest}", second.split('?').next().unwrap()),
        b"!",
    );
    assert_error(&dropped, 400, "BLOB_UPLOAD_INVALID");
    let stale = req(&reg, "PUT", &format!("{first}&digest={digest}"), b"!");
    assert_error(&stale, 400, "BLOB_UPLOAD_INVALID");
    let unknown = req(
        &reg,
        "PUT",
        &format!("/v2/library/busybox/blobs/uploads/nope?_state=x&digest={digest}"),
        b"!",
    );
    assert_error(&unknown, 404, "BLOB_UPLOAD_UNKNOWN");
    let wrong = req(
        &reg,
        "PUT",
        &format!("{second}&digest={}", sha256(b"x")),
        b"!",
    );
    assert_error(&wrong, 400, "DIGEST_INVALID");
    let done = req(&reg, "PUT", &format!("{second}&digest={digest}"), b"!");
    assert_eq!(done.status, 201);
    assert_eq!(
        done.header("location"),
        Some(format!("/v2/library/busybox/blobs/{digest}").as_str())
    );
    assert_eq!(reg.blob(&digest).unwrap(), b"hello world!");
}

#[test]
fn mount_from_another_repo() {
    let reg = FakeRegistry::start(Faults::default());
    let digest = reg.put_blob("library/base", b"base layer");
    let mount = req(
        &reg,
        "POST",
        &format!(
            "/v2/team/app/blobs/uploads/?mount={}&from=library%2Fbase",
            digest.replace(':', "%3A")
        ),
        b"",
    );
    assert_eq!(
        (mount.status, mount.header("docker-content-digest")),
        (201, Some(digest.as_str()))
    );
    assert!(mount
        .location()
        .ends_with(&format!("/v2/team/app/blobs/{digest}")));
    assert!(reg.repo_has_blob("team/app", &digest));
    // Mounting from a repository that does not have the blob starts an upload instead.
    let miss = req(
        &reg,
        "POST",
        &format!("/v2/team/b/blobs/uploads/?mount={digest}&from=team/nothing"),
        b"",
    );
    assert_eq!(miss.status, 202);

    let refusing = FakeRegistry::start(Faults {
        mount_returns_202: true,
        ..Faults::default()
    });
    let digest = refusing.put_blob("library/base", b"base layer");
    let mount = req(
        &refusing,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=library/base"),
        b"",
    );
    assert_eq!(mount.status, 202);
    assert!(
        mount.location().contains("/v2/team/app/blobs/uploads/")
            && mount.location().contains("_state=")
    );
    assert!(!refusing.repo_has_blob("team/app", &digest));
}

#[test]
fn manifests_need_their_blobs_and_round_trip() {
    let reg = FakeRegistry::start(Faults::default());
    let config = push_blob(&reg, "team/app", b"{}");
    let layer = push_blob(&reg, "team/app", b"layer");
    let absent = sha256(b"absent");
    let ct = [("Content-Type", OCI_MANIFEST)];

    let missing = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/1",
        &ct,
        &image_manifest(&config, &[&layer, &absent]),
    )
    .unwrap();
    assert_error(&missing, 400, "MANIFEST_BLOB_UNKNOWN");
    assert!(String::from_utf8_lossy(&missing.body).contains(&absent));
    let mismatch = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/1",
        &[("Content-Type", OCI_INDEX)],
        &image_manifest(&config, &[]),
    )
    .unwrap();
    assert_error(&mismatch, 400, "MANIFEST_INVALID");
    let not_json = send(&reg, "PUT", "/v2/team/app/manifests/1", &ct, b"{nope").unwrap();
    assert_eq!(not_json.status, 400);

    let bytes = image_manifest(&config, &[&layer]);
    let digest = sha256(&bytes);
    let wrong_digest = send(
        &reg,
        "PUT",
        &format!("/v2/team/app/manifests/{}", sha256(b"x")),
        &ct,
        &bytes,
    )
    .unwrap();
    assert_error(&wrong_digest, 400, "DIGEST_INVALID");
    let put = send(&reg, "PUT", "/v2/team/app/manifests/1", &ct, &bytes).unwrap();
    assert_eq!(
        (put.status, put.header("docker-content-digest")),
        (201, Some(digest.as_str()))
    );
    for reference in ["1", digest.as_str()] {
        let got = req(
            &reg,
            "GET",
            &format!("/v2/team/app/manifests/{reference}"),
            b"",
        );
        assert_eq!(
            (got.status, got.header("content-type")),
            (200, Some(OCI_MANIFEST))
        );
        assert_eq!(
            (got.body.as_slice(), got.header("docker-content-digest")),
            (bytes.as_slice(), Some(digest.as_str()))
        );
    }
    let head = req(&reg, "HEAD", "/v2/team/app/manifests/1", b"");
    assert_eq!(
        (head.status, head.header("content-length").unwrap()),
        (200, bytes.len().to_string().as_str())
    );
    assert_eq!(
        req(&reg, "GET", "/v2/team/app/manifests/2", b"").code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        reg.manifest("team/app", "1").unwrap(),
        (OCI_MANIFEST.to_string(), bytes.clone())
    );
    assert_eq!(reg.tags("team/app"), ["1"]);
    let tags: Value =
        serde_json::from_slice(&req(&reg, "GET", "/v2/team/app/tags/list", b"").body).unwrap();
    assert_eq!(tags, json!({"name": "team/app", "tags": ["1"]}));

    // An index needs its children in the repository.
    let index = |child: &str| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}]}))
        .unwrap()
    };
    let ict = [("Content-Type", OCI_INDEX)];
    let orphan = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/multi",
        &ict,
        &index(&absent),
    )
    .unwrap();
    assert_error(&orphan, 400, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        send(
            &reg,
            "PUT",
            "/v2/team/app/manifests/multi",
            &ict,
            &index(&digest)
        )
        .unwrap()
        .status,
        201
    );
    assert_eq!(reg.tags("team/app"), ["1", "multi"]);
    // Seeded manifests are served like pushed ones.
    let seeded = reg.put_manifest("team/app", "seeded", OCI_INDEX, &index(&digest));
    let got = req(&reg, "GET", "/v2/team/app/manifests/seeded", b"");
    assert_eq!(
        (got.header("docker-content-digest"), got.body.as_slice()),
        (Some(seeded.as_str()), index(&digest).as_slice())
    );

    let refusing = FakeRegistry::start(Faults {
        refuse_manifest_put: true,
        ..Faults::default()
    });
    let config = refusing.put_blob("a", b"{}");
    let refused = send(
        &refusing,
        "PUT",
        "/v2/a/manifests/1",
        &ct,
        &image_manifest(&config, &[]),
    )
    .unwrap();
    assert_error(&refused, 400, "MANIFEST_INVALID");
}

#[test]
fn bearer_tokens_challenge_and_expire() {
    let reg = FakeRegistry::start(Faults {
        bearer: true,
        token_valid_for_requests: Some(2),
        ..Faults::default()
    });
    let base = req(&reg, "GET", "/v2/", b"");
    let realm = format!(
        r#"Bearer realm="http://{}/token",service="fake-registry""#,
        reg.host()
    );
    assert_eq!(
        (base.status, base.header("www-authenticate")),
        (401, Some(realm.as_str()))
    );
    let blob = req(
        &reg,
        "HEAD",
        &format!("/v2/team/app/blobs/{}", sha256(b"x")),
        b"",
    );
    let scoped = format!(r#"{realm},scope="repository:team/app:pull,push""#);
    assert_eq!(
        (blob.status, blob.header("www-authenticate")),
        (401, Some(scoped.as_str()))
    );

    let token: Value = serde_json::from_slice(
        &req(
            &reg,
            "GET",
            "/token?service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull%2Cpush",
            b"",
        )
        .body,
    )
    .unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    let with = |path: &str| {
        send(&reg, "GET", path, &[("Authorization", &auth)], b"")
            .unwrap()
            .status
    };
    assert_eq!(with("/v2/"), 200);
    assert_eq!(
        with("/v2/team/app/tags/list"),
        404,
        "authorized, then NAME_UNKNOWN"
    );
    assert_eq!(with("/v2/"), 401, "the token is spent after 2 requests");
    assert_eq!(
        send(
            &reg,
            "GET",
            "/v2/",
            &[("Authorization", "Bearer forged")],
            b""
        )
        .unwrap()
        .status,
        401
    );
    assert_eq!(reg.tokens_issued(), 1);
    assert_eq!(
        reg.requests()[3].authorization.as_deref(),
        Some(auth.as_str())
    );

    // Credentials: checked by the token endpoint in bearer mode, on every request otherwise.
    let creds = Some(("alice".to_string(), "s3cret".to_string()));
    let good = format!("Basic {}", base64(b"alice:s3cret"));
    let bearer = FakeRegistry::start(Faults {
        bearer: true,
        basic_auth: creds.clone(),
        ..Faults::default()
    });
    let anon = req(&bearer, "GET", "/token?service=fake-registry", b"");
    assert_eq!(
        (anon.status, anon.header("www-authenticate")),
        (401, Some(r#"Basic realm="fake-registry""#))
    );
    assert_eq!(
        send(
            &bearer,
            "GET",
            "/token?service=fake-registry",
            &[("Authorization", &good)],
            b""
        )
        .unwrap()
        .status,
        200
    );
    let basic = FakeRegistry::start(Faults {
        basic_auth: creds,
        ..Faults::default()
    });
    assert_eq!(
        req(&basic, "GET", "/v2/", b"").header("www-authenticate"),
        Some(r#"Basic realm="fake-registry""#)
    );
    assert_eq!(
        send(
            &basic,
            "GET",
            "/v2/",
            &[("Authorization", "Basic YWxpY2U6d3Jvbmc=")],
            b""
        )
        .unwrap()
        .status,
        401
    );
    assert_eq!(
        send(&basic, "GET", "/v2/", &[("Authorization", &good)], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(basic.tokens_issued(), 0);
}

#[test]
fn first_upload_post_is_rate_limited_once() {
    let reg = FakeRegistry::start(Faults {
        rate_limit_first_upload_post: true,
        ..Faults::default()
    });
    let limited = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    assert_eq!(
        (
            limited.status,
            limited.header("retry-after"),
            limited.code().as_str()
        ),
        (429, Some("1"), "TOOMANYREQUESTS")
    );
    assert_eq!(
        req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"").status,
        202
    );
}

#[test]
fn first_blob_put_fails_once() {
    let reg = FakeRegistry::start(Faults {
        fail_first_blob_put: true,
        ..Faults::default()
    });
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    let target = format!("{}&digest={}", post.location(), sha256(b"data"));
    let failed = req(&reg, "PUT", &target, b"data");
    assert_error(&failed, 500, "UNKNOWN");
    assert!(reg.blob(&sha256(b"data")).is_none());
    assert_eq!(
        req(&reg, "PUT", &target, b"data").status,
        201,
        "the session survives the failure"
    );
}

#[test]
fn first_blob_put_resets_the_connection() {
    let reg = FakeRegistry::start(Faults {
        reset_first_blob_put: true,
        ..Faults::default()
    });
    let body = vec![7u8; 200_000];
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    let target = format!("{}&digest={}", post.location(), sha256(&body));
    assert!(
        send(&reg, "PUT", &target, &[], &body).is_err(),
        "no response after a reset"
    );
    let reset = reg.requests().pop().unwrap();
    assert_eq!((reset.method.as_str(), reset.status), ("PUT", 0));
    assert!(reset.body_len > 0 && reset.body_len < body.len());
    assert!(reg.blob(&sha256(&body)).is_none());
    assert_eq!(req(&reg, "PUT", &target, &body).status, 201);
}

#[test]
fn malformed_requests_get_400_and_the_server_lives_on() {
    let reg = FakeRegistry::start(Faults::default());
    let garbage: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nno colon here\r\n\r\n",
        b"PUT /v2/a/blobs/uploads/ HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for bytes in garbage {
        let mut stream = TcpStream::connect(reg.addr()).unwrap();
        stream.write_all(bytes).unwrap();
        assert_eq!(
            raw_reply(stream).unwrap().status,
            400,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    drop(TcpStream::connect(reg.addr()).unwrap()); // connect and leave
    assert_eq!(
        req(&reg, "GET", "/v2/Team/App/manifests/1", b"").code(),
        "NAME_INVALID"
    );
    assert_eq!(req(&reg, "GET", "/nowhere", b"").status, 404);
    assert_eq!(req(&reg, "DELETE", "/v2/a/manifests/1", b"").status, 405);
    assert_eq!(req(&reg, "GET", "/v2/", b"").status, 200);
}

#[test]
fn skopeo_pushes_and_inspects() {
    for tool in ["skopeo", "umoci"] {
        crate::support::require(tool);
    }
    let reg = FakeRegistry::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layout = layout.to_str().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello from the fake registry\n").unwrap();
    let run = |args: &[&str]| {
        crate::support::run_ok(
            std::process::Command::new(args[0])
                .args(&args[1..])
                .current_dir(dir.path()),
        )
    };
    run(&["umoci", "init", "--layout", layout]);
    run(&["umoci", "new", "--image", &format!("{layout}:1")]);
    run(&[
        "umoci",
        "insert",
        "--rootless",
        "--image",
        &format!("{layout}:1"),
        "hello",
        "/hello",
    ]);

    let dest = format!("docker://{}/team/x:1", reg.host());
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{layout}:1"),
        &dest,
    ]);
    let (media_type, bytes) = reg
        .manifest("team/x", "1")
        .expect("skopeo pushed a manifest");
    assert_eq!(media_type, OCI_MANIFEST);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(reg.repo_has_blob("team/x", manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert!(
        reg.requests().iter().any(|r| r.method == "PATCH"),
        "skopeo uploads with PATCH"
    );

    let out = run(&["skopeo", "inspect", "--tls-verify=false", &dest]);
    let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"].as_str(), Some(sha256(&bytes).as_str()));
    assert_eq!(inspect["RepoTags"], json!(["1"]));
    let failures: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.status >= 500 || r.status == 0)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");

    // The challenge, the token endpoint (with credentials) and relative Locations work for skopeo too.
    let creds = Some(("alice".to_string(), "s3cret".to_string()));
    let faults = Faults {
        bearer: true,
        relative_location: true,
        basic_auth: creds,
        ..Faults::default()
    };
    let authed = FakeRegistry::start(faults);
    let dest = format!("docker://{}/team/x:1", authed.host());
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &format!("oci:{layout}:1"),
        &dest,
    ]);
    assert_eq!(authed.manifest("team/x", "1").unwrap().1, bytes);
    assert!(authed.tokens_issued() >= 1);
}
