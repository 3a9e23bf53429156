//! A toolchain that runs no compiler: each compile writes a small static ELF executable for the
//! target (an `exit(0)` program that carries the features it was "built" with), so the whole
//! pipeline can be exercised in milliseconds. The pipeline's own tests run on it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{CompileError, CompileRequest, Compiled, ToolVersions, Toolchain};
use crate::cancel::Cancel;
use crate::target::{Arch, Target};

/// What a test runs at the start of each compile, with the compile's features.
type OnCompile = Box<dyn Fn(&[String]) + Send + Sync>;

/// A toolchain that writes a prepared ELF instead of compiling.
pub struct FakeToolchain {
    dir: PathBuf,
    /// A compile with this feature fails (as cargo would, with this message).
    fail_feature: Option<(String, String)>,
    /// Called at the start of every compile, with the features (a test cancels from here).
    on_compile: Option<OnCompile>,
    compiles: Mutex<Vec<String>>,
}

impl FakeToolchain {
    /// Writes its binaries into `dir`.
    pub fn new(dir: &Path) -> FakeToolchain {
        FakeToolchain {
            dir: dir.to_path_buf(),
            fail_feature: None,
            on_compile: None,
            compiles: Mutex::new(Vec::new()),
        }
    }

    /// Fails every compile that enables `feature`.
    pub fn failing(mut self, feature: &str, message: &str) -> FakeToolchain {
        self.fail_feature = Some((feature.to_string(), message.to_string()));
        self
    }

    /// Runs `f` at the start of every compile.
    pub fn on_compile(mut self, f: impl Fn(&[String]) + Send + Sync + 'static) -> FakeToolchain {
        self.on_compile = Some(Box::new(f));
        self
    }

    /// The compiles so far, as `features@target`, in order.
    pub fn compiles(&self) -> Vec<String> {
        self.compiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Toolchain for FakeToolchain {
    fn compile(
        &self,
        req: &CompileRequest<'_>,
        cancel: &Cancel,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Compiled, CompileError> {
        if let Some(f) = &self.on_compile {
            f(req.features);
        }
        cancel
            .check()
            .map_err(|c| CompileError::Cancelled(c.reason))?;
        let what = format!("{}@{}", req.features.join(","), req.target);
        self.compiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what.clone());
        log(&format!("   Compiling (fake) {what}"));
        if let Some((feature, message)) = &self.fail_feature {
            if req.features.contains(feature) {
                return Err(CompileError::Failed {
                    status: "exit status: 101".into(),
                    tail: message.clone(),
                });
            }
        }
        let path = self.dir.join(req.target.triple()).join(req.binary);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a parent"))?;
            std::fs::write(&path, static_elf(req.target, what.as_bytes()))
        };
        write().map_err(|e| CompileError::Failed {
            status: "fake".into(),
            tail: format!("cannot write {}: {e}", path.display()),
        })?;
        Ok(Compiled {
            path,
            sccache: None,
        })
    }

    fn versions(&self, _project: &Path) -> ToolVersions {
        ToolVersions {
            rustc: "rustc 0.0.0 (fake)".into(),
            cargo_zigbuild: "cargo-zigbuild 0.0.0 (fake)".into(),
            zig: "0.0.0".into(),
            upx: None,
        }
    }

    fn fingerprint(
        &self,
        req: &CompileRequest<'_>,
        tools: &ToolVersions,
    ) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({
            "features": req.features,
            "target": req.target.triple(),
            "binary": req.binary,
            "profile": req.profile,
            "rustflags": req.rustflags,
            "tools": tools,
        }))
    }
}

/// A static ELF64 executable for `target` that exits 0, with `note` in its loaded bytes (so
/// binaries of different variants differ). One `PT_LOAD` segment, no sections, no interpreter.
pub fn static_elf(target: Target, note: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let (machine, code): (u16, &[u8]) = match target.arch() {
        // mov eax, 60 (exit); xor edi, edi; syscall
        Arch::X86_64 => (62, &[0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]),
        // mov x0, #0; mov x8, #93 (exit); svc #0
        Arch::Aarch64 => (
            183,
            &[
                0x00, 0x00, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
            ],
        ),
    };
    let size = HEADERS + code.len() as u64 + note.len() as u64;
    let mut b = Vec::with_capacity(size as usize);
    // e_ident: ELF, 64-bit, little endian, version 1, System V ABI.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        b.extend_from_slice(&half.to_le_bytes());
    }
    // PT_LOAD, R+X, the whole file at BASE.
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&0x1000u64.to_le_bytes());
    b.extend_from_slice(code);
    b.extend_from_slice(note);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prepared_elf_is_a_static_executable_of_the_target() {
        for triple in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
            let target: Target = triple.parse().unwrap();
            let facts = crate::elf::inspect(&static_elf(target, b"db_sqlite")).unwrap();
            let verdict = crate::elf::judge(&facts, target);
            assert!(verdict.acceptable, "{triple}: {:?}", verdict.problems);
            assert!(facts.interpreter.is_none() && facts.needed.is_empty());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_prepared_elf_runs_and_exits_zero() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake");
        let target = Target::X86_64Musl;
        std::fs::write(&path, static_elf(target, b"x")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(std::process::Command::new(&path)
            .status()
            .unwrap()
            .success());
    }
}
