//! The strip stage: drop the symbol table and debug sections with the `object` crate's ELF
//! rewriter, which reads every architecture (the host's GNU strip cannot read aarch64 binaries).

use std::path::Path;

use object::build::elf::{Builder, SectionData};

use super::verify::{verify, VerifiedBinary, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum StripError {
    #[error("cannot read {0} for stripping: {1}")]
    Read(String, std::io::Error),
    #[error("the ELF rewriter could not strip this binary: {0}")]
    Rewrite(String),
    #[error("cannot write the stripped binary {0}: {1}")]
    Write(String, std::io::Error),
    #[error("the stripped binary failed verification: {0}")]
    Verify(#[from] VerifyError),
}

/// What the strip stage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StripOutcome {
    Stripped,
    /// The linker had already stripped it: nothing to remove, the bytes are unchanged.
    AlreadyStripped,
}

/// Whether a section is one `strip --strip-all` removes.
fn removable(name: &[u8]) -> bool {
    name == b".symtab"
        || name == b".strtab"
        || name == b".symtab_shndx"
        || name.starts_with(b".debug_")
        || name.starts_with(b".zdebug_")
}

/// Strips `input` into `output` and verifies the result again.
pub fn strip(
    input: &VerifiedBinary,
    output: &Path,
) -> Result<(VerifiedBinary, StripOutcome), StripError> {
    let facts = input.facts();
    if !facts.symbols && !facts.debug_info {
        std::fs::copy(input.path(), output)
            .map_err(|e| StripError::Write(output.display().to_string(), e))?;
        return Ok((
            verify(output, input.target())?,
            StripOutcome::AlreadyStripped,
        ));
    }
    let data = std::fs::read(input.path())
        .map_err(|e| StripError::Read(input.path().display().to_string(), e))?;
    let mut builder = Builder::read(&*data).map_err(|e| StripError::Rewrite(e.to_string()))?;
    for section in builder.sections.iter_mut() {
        let by_kind = matches!(
            section.data,
            SectionData::Symbol | SectionData::SymbolSectionIndex
        );
        if by_kind || (!section.is_alloc() && removable(section.name.as_slice())) {
            section.delete = true;
        }
    }
    for symbol in builder.symbols.iter_mut() {
        symbol.delete = true;
    }
    let mut out = Vec::with_capacity(data.len());
    builder
        .write(&mut out)
        .map_err(|e| StripError::Rewrite(e.to_string()))?;
    write_executable(output, &out)?;
    Ok((verify(output, input.target())?, StripOutcome::Stripped))
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<(), StripError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e| StripError::Write(path.display().to_string(), e);
    std::fs::write(path, bytes).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(err)
}
