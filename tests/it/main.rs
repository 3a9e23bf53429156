//! galley's integration tests: one binary, one module per area.
//!
//! - `support`: the harness (fixtures, the shared base image, a lock so heavy builds never overlap).
//! - `elf_verdicts`: verdicts of `galley verify` and the `elf` module on real binaries of every kind,
//!   and 1,200 corrupted binaries that must be refused or judged, never panic.
//! - `strip`: the object-based stripper on x86_64 and aarch64 binaries with symbols.
//! - `golden`: golden digests for a fixed layer and config, so a dependency moving digests fails.
//! - `layers`: no module of src/ names a module above it (the order of ARCHITECTURE.md).
//! - `build_e2e`: real cargo-zigbuild builds of the tiny fixture, checked with skopeo, umoci, chroot;
//!   its oci-archive and docker-archive outputs.
//! - `reproducible`: the same build from two directories gives identical digests.
//! - `repro`: `galley repro` rebuilds a report's inputs elsewhere: identical, or the differing
//!   keys and files named; a git project from its commit; Ctrl-C.
//! - `upx`: UPX missing, refusing or producing a broken binary leaves a warning and a working image.
//! - `multi_platform`: two targets give an image index (linux/amd64, linux/arm64/v8).
//! - `bad_input`: clear errors, exit codes and nothing written for malformed requests.
//! - `authd`: the realistic multi-variant service, all three variants, served from a chroot.
//! - `dockerfile`: Dockerfile.runtime stays equivalent to the image galley builds.
//! - `doctor`: `galley doctor` against docker-registry: anonymous, htpasswd, token auth, a
//!   read-only token, a refused connection; no upload session left, no secret printed.
//! - `rebase`: `galley rebase` from one busybox base to another and back, checked with skopeo,
//!   umoci and chroot; the attached documents follow; bad input refused.
//! - `real_registry`: the harness starting Debian's docker-registry (anonymous, htpasswd, token auth).
//! - `fake_registry`: an in-process registry with fault injection (server, routes, its own tests).
//! - `registry_faults`: the faults a push survives as one table (202 on mount, relative Location,
//!   429 with Retry-After in seconds or as a date, 500, reset), token refresh, refused manifest, cancel.
//! - `registry_e2e`: pull and push against that real registry, checked with skopeo, umoci, chroot.
//! - `projects`: a workspace with one binary per backend, the project's rustflags, image files;
//!   a base config with a tab and a newline; a published crate with C code (b3sum).
//! - `cache`: the stage cache: hits, every kind of invalidation, corrupt entries, two processes.
//! - `cli_contract`: the CLI as scripts use it: image references on stdout and in
//!   `--image-refs`, a positional project, `--platform`, `GALLEY_REPO`, `-q`, `galley push` tags
//!   last; completions and man pages.
//! - `cancel`: Ctrl-C of `galley build` stops every child (checked in /proc), leaves nothing.
//! - `release`: when tags move (all variants or --partial), report.json first, index.json
//!   locked, the base tag's TTL.
//! - `hardening`: `galley serve` against hostile clients (half-sent requests, too many streams,
//!   cross-site posts, rebinding hosts), a second instance, a full disk, a silent registry, a
//!   runaway log and detached processes: one regression test per defect of the probe.
//! - `pg_cluster`: a real PostgreSQL (Debian's binaries, `initdb` in a scratch directory, a
//!   loopback port, password auth), started once, stopped by a watchdog when the tests end.
//! - `store_pg`: the store's contract on PostgreSQL, what that store refuses, a real
//!   `galley serve` whose history lives there.
//! - `fleet`: two `galley serve` workers on one PostgreSQL: builds spread and built once, records
//!   and streams from either instance, cancel across instances, a worker killed mid-compile, a
//!   PostgreSQL restart mid-build, `/api/v1/workers`.
//! - `service`: the harness for a real `galley serve` process and an SSE client.
//! - `serve`: the service end to end: builds, pushes, SSE resume, history, git refs, cancel,
//!   restart after SIGKILL, SIGTERM, bad input, tokens, secrets, OpenAPI.

mod authd;
mod bad_input;
mod build_e2e;
mod cache;
mod cancel;
mod cli_contract;
mod dockerfile;
mod doctor;
mod elf_verdicts;
#[allow(dead_code)]
mod fake_registry;
mod fleet;
mod golden;
mod hardening;
mod layers;
mod multi_platform;
mod pg_cluster;
mod projects;
mod real_registry;
mod rebase;
mod registry_e2e;
mod registry_faults;
mod release;
mod repro;
mod reproducible;
mod sccache;
mod serve;
mod service;
mod shared_cache;
mod store_pg;
mod strip;
mod support;
mod upx;
