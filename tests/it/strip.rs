//! The object-based stripper on real binaries with symbols, for both architectures.

use std::process::Command;

use galley::elf;
use galley::pipeline::strip::{strip, StripOutcome};
use galley::pipeline::verify::verify;
use galley::target::Target;

use crate::elf_verdicts::samples;
use crate::support::scratch;

#[test]
fn strips_x86_64_and_the_result_still_runs() {
    let samples = samples();
    let dir = scratch("strip-x86_64");
    for name in ["rust-musl-static-pie", "c-musl-debug"] {
        let input = verify(&samples.path(name), Target::X86_64Musl).unwrap();
        assert!(
            input.facts().symbols,
            "{name} should have symbols before stripping"
        );
        let out = dir.join(name);
        let (stripped, outcome) = strip(&input, &out).unwrap();
        assert_eq!(outcome, StripOutcome::Stripped);
        assert!(
            !stripped.facts().symbols && !stripped.facts().debug_info,
            "{name}: {:?}",
            stripped.facts()
        );
        assert!(
            stripped.size() < input.size(),
            "{name}: {} !< {}",
            stripped.size(),
            input.size()
        );
        let run = Command::new(&out).arg("--version").output().unwrap();
        assert!(
            run.status.success(),
            "{name} stripped does not run: {run:?}"
        );
    }
}

#[test]
fn strips_aarch64_which_host_strip_cannot_read() {
    let samples = samples();
    let dir = scratch("strip-aarch64");
    let input = verify(&samples.path("c-musl-aarch64-debug"), Target::Aarch64Musl).unwrap();
    assert!(input.facts().symbols && input.facts().debug_info);
    let out = dir.join("hello");
    let (stripped, outcome) = strip(&input, &out).unwrap();
    assert_eq!(outcome, StripOutcome::Stripped);
    let facts = elf::inspect(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(facts.machine, "aarch64");
    assert!(!facts.symbols && !facts.debug_info);
    assert!(
        stripped.size() < input.size() / 2,
        "{} vs {}",
        stripped.size(),
        input.size()
    );
}

#[test]
fn already_stripped_binaries_are_left_byte_identical() {
    let samples = samples();
    let dir = scratch("strip-noop");
    let input = verify(&samples.path("rust-musl-zig"), Target::X86_64Musl).unwrap();
    let (stripped, outcome) = strip(&input, &dir.join("tiny")).unwrap();
    assert_eq!(outcome, StripOutcome::AlreadyStripped);
    assert_eq!(stripped.digest(), input.digest());
}
