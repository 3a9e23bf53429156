//! ELF facts from bytes, and the verdict on whether a binary can ship in a minimal image.
//!
//! This module does no I/O: it reads a byte slice. Nothing here panics on hostile input; every
//! malformed file becomes an [`ElfError`] or a fact the verdict refuses.

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;
use serde::Serialize;

use crate::target::{Arch, Target};

/// Why a file could not be read as ELF at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("the file is empty: the compiler produced no binary")]
    Empty,
    #[error("not an ELF file (it starts with {magic}): galley packages Linux executables")]
    NotElf { magic: String },
    #[error("unknown ELF class {0}: the header is corrupt")]
    BadClass(u8),
    #[error("malformed ELF file ({0}): the file is truncated or corrupt; rebuild it")]
    Malformed(&'static str),
}

/// The ELF class: 32 or 64 bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Class {
    #[serde(rename = "ELF32")]
    Elf32,
    #[serde(rename = "ELF64")]
    Elf64,
}

/// Which C library a binary was linked against, and how we know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "libc", content = "evidence", rename_all = "snake_case")]
pub enum Libc {
    /// musl, with the evidence that says so (a musl symbol or a musl interpreter).
    Musl(String),
    /// glibc, with the evidence that says so (GNU ABI note, glibc symbols or strings).
    Glibc(String),
    /// No marker of either: a stripped static binary without glibc markers, which is what a
    /// stripped static musl binary looks like.
    NoMarker,
}

impl std::fmt::Display for Libc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Libc::Musl(e) => write!(f, "musl ({e})"),
            Libc::Glibc(e) => write!(f, "glibc ({e})"),
            Libc::NoMarker => f.write_str("no glibc markers (static; musl or libc-free)"),
        }
    }
}

/// Facts read from an ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ElfFacts {
    pub size: u64,
    pub class: Class,
    /// `e_machine`, by name when galley knows it.
    pub machine: String,
    /// The architecture, when it is one galley builds for.
    #[serde(skip)]
    pub arch: Option<Arch>,
    /// `ET_EXEC` (fixed address) or `ET_DYN` (position independent: PIE, static-pie or a library).
    pub file_type: String,
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    /// Whether a `PT_DYNAMIC` segment is present (static-pie binaries have one, with no `DT_NEEDED`).
    pub dynamic_segment: bool,
    /// `DT_NEEDED` entries counted in `PT_DYNAMIC`, for files whose section headers are gone.
    pub needed_count: usize,
    pub libc: Libc,
    pub section_headers: bool,
    /// Whether a `.symtab` symbol table is present (it is what `strip` removes).
    pub symbols: bool,
    /// Whether `.debug_*` sections are present.
    pub debug_info: bool,
}

/// Why a binary cannot ship for a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub target: String,
    pub acceptable: bool,
    /// One line per problem, each saying what is wrong and what to do.
    pub problems: Vec<String>,
}

impl Verdict {
    /// All problems joined into one sentence, for error messages.
    pub fn reason(&self) -> String {
        self.problems.join("; ")
    }
}

/// Reads the ELF facts of a file's bytes.
pub fn inspect(data: &[u8]) -> Result<ElfFacts, ElfError> {
    if data.is_empty() {
        return Err(ElfError::Empty);
    }
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        let magic = data
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(ElfError::NotElf {
            magic: format!("bytes {magic}"),
        });
    }
    match data.get(4) {
        Some(1) => inspect_class::<elf::FileHeader32<Endianness>>(data, Class::Elf32),
        Some(2) => inspect_class::<elf::FileHeader64<Endianness>>(data, Class::Elf64),
        Some(other) => Err(ElfError::BadClass(*other)),
        None => Err(ElfError::Malformed("no ELF identification")),
    }
}

fn inspect_class<E: FileHeader<Endian = Endianness>>(
    data: &[u8],
    class: Class,
) -> Result<ElfFacts, ElfError> {
    let header = E::parse(data).map_err(|_| ElfError::Malformed("file header"))?;
    let en = header
        .endian()
        .map_err(|_| ElfError::Malformed("byte order"))?;
    let machine_raw = header.e_machine(en);
    let (machine, arch) = match machine_raw {
        elf::EM_X86_64 => ("x86_64".to_string(), Some(Arch::X86_64)),
        elf::EM_AARCH64 => ("aarch64".to_string(), Some(Arch::Aarch64)),
        elf::EM_386 => ("i386".to_string(), None),
        elf::EM_ARM => ("arm".to_string(), None),
        elf::EM_RISCV => ("riscv".to_string(), None),
        other => (format!("machine {}", other.0), None),
    };
    let file_type = match header.e_type(en) {
        elf::ET_EXEC => "ET_EXEC (static address)".to_string(),
        elf::ET_DYN => "ET_DYN (position independent)".to_string(),
        elf::ET_REL => "ET_REL (object file, not linked)".to_string(),
        elf::ET_CORE => "ET_CORE (core dump)".to_string(),
        other => format!("type {}", other.0),
    };

    let mut interpreter = None;
    let mut dynamic_segment = false;
    let mut needed_count = 0;
    let phdrs = header
        .program_headers(en, data)
        .map_err(|_| ElfError::Malformed("program headers"))?;
    for ph in phdrs {
        if ph.p_type(en) == elf::PT_INTERP {
            let bytes = ph
                .interpreter(en, data)
                .map_err(|_| ElfError::Malformed("interpreter segment"))?;
            interpreter = bytes.map(|b| String::from_utf8_lossy(b).into_owned());
        }
        if let Some(dyns) = ph
            .dynamic(en, data)
            .map_err(|_| ElfError::Malformed("dynamic segment"))?
        {
            dynamic_segment = true;
            needed_count += dyns.iter().filter(|d| d.tag(en) == elf::DT_NEEDED).count();
        }
    }

    // Section headers can be absent (UPX output, sstrip); then the program headers above are all
    // we have, and the section-based facts stay empty.
    let sections = header
        .sections(en, data)
        .map_err(|_| ElfError::Malformed("section headers"))?;
    let section_headers = !sections.is_empty();
    let mut needed = Vec::new();
    let dynamic = sections
        .dynamic_table(en, data)
        .map_err(|_| ElfError::Malformed("dynamic section"))?;
    for d in dynamic.iter() {
        if d.tag == elf::DT_NEEDED {
            let name = dynamic
                .string(d)
                .map_err(|_| ElfError::Malformed("dynamic string table"))?;
            needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }

    let mut gnu_abi_note = false;
    let mut debug_info = false;
    for sh in sections.iter() {
        let name = sections.section_name(en, sh).unwrap_or_default();
        if name.starts_with(b".debug_") || name.starts_with(b".zdebug_") {
            debug_info = true;
        }
        if sh.sh_type(en) != elf::SHT_NOTE {
            continue;
        }
        if let Ok(Some(mut notes)) = sh.notes(en, data) {
            while let Ok(Some(note)) = notes.next() {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(en) == elf::NT_GNU_ABI_TAG {
                    gnu_abi_note = true;
                }
            }
        }
    }

    let symtab = sections
        .symbols(en, data, elf::SHT_SYMTAB)
        .map_err(|_| ElfError::Malformed("symbol table"))?;
    let symbols = !symtab.is_empty();
    let mut musl_symbol = None;
    let mut glibc_symbol = None;
    for sym in symtab.iter() {
        match symtab.symbol_name(en, sym) {
            Ok(name @ (b"__init_libc" | b"__libc_start_init" | b"__dls2" | b"__dls3")) => {
                musl_symbol.get_or_insert_with(|| String::from_utf8_lossy(name).into_owned());
            }
            Ok(
                name @ (b"__libc_setup_tls"
                | b"_dl_relocate_static_pie"
                | b"__libc_start_call_main"
                | b"_dl_aux_init"),
            ) => {
                glibc_symbol.get_or_insert_with(|| String::from_utf8_lossy(name).into_owned());
            }
            _ => {}
        }
    }

    let libc = if let Some(interp) = interpreter.as_deref().filter(|i| i.contains("ld-musl")) {
        Libc::Musl(format!("interpreter {interp}"))
    } else if gnu_abi_note {
        Libc::Glibc("GNU ABI note (.note.ABI-tag)".into())
    } else if let Some(sym) = glibc_symbol {
        Libc::Glibc(format!("glibc symbol {sym}"))
    } else if let Some(lib) = needed
        .iter()
        .find(|n| n.starts_with("libc.so.6") || n.starts_with("ld-linux"))
    {
        Libc::Glibc(format!("needs {lib}"))
    } else if interpreter
        .as_deref()
        .is_some_and(|i| i.contains("ld-linux"))
    {
        Libc::Glibc(format!(
            "interpreter {}",
            interpreter.as_deref().unwrap_or_default()
        ))
    } else if contains(data, b"GLIBC_TUNABLES") || contains(data, b"GLIBC_2.") {
        // Static glibc keeps these strings even when stripped of symbols and notes.
        Libc::Glibc("glibc strings (GLIBC_TUNABLES / GLIBC_2.x) in the binary".into())
    } else if let Some(sym) = musl_symbol {
        Libc::Musl(format!("musl symbol {sym}"))
    } else {
        Libc::NoMarker
    };

    Ok(ElfFacts {
        size: data.len() as u64,
        class,
        machine,
        arch,
        file_type,
        interpreter,
        needed,
        dynamic_segment,
        needed_count,
        libc,
        section_headers,
        symbols,
        debug_info,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Judges whether a binary with these facts can ship in a minimal image for `target`.
pub fn judge(facts: &ElfFacts, target: Target) -> Verdict {
    let mut problems = Vec::new();
    if facts.class != Class::Elf64 {
        problems.push(format!(
            "32-bit ELF: galley ships 64-bit binaries; build with --target {}",
            target.triple()
        ));
    }
    match facts.arch {
        Some(arch) if arch == target.arch() => {}
        _ => problems.push(format!(
            "built for {}, not {}: build with --target {}",
            facts.machine,
            target.arch(),
            target.triple()
        )),
    }
    if !facts.file_type.starts_with("ET_EXEC") && !facts.file_type.starts_with("ET_DYN") {
        problems.push(format!(
            "{} is not an executable: pass the linked binary",
            facts.file_type
        ));
    }
    let needs = if !facts.needed.is_empty() {
        format!(", needs {}", facts.needed.join(", "))
    } else if facts.needed_count > 0 {
        format!(", needs {} shared libraries", facts.needed_count)
    } else {
        String::new()
    };
    if let Some(interp) = &facts.interpreter {
        problems.push(format!(
            "dynamically linked: interpreter {interp}{needs}: build for a -musl target ({}) so the binary is static",
            target.triple()
        ));
    } else if !needs.is_empty() {
        problems.push(format!(
            "dynamically linked{needs}: build for a -musl target ({}) so the binary is static",
            target.triple()
        ));
    }
    if let Libc::Glibc(evidence) = &facts.libc {
        problems.push(format!(
            "linked against glibc ({evidence}): glibc binaries do not run on musl bases such as alpine; build for {}",
            target.triple()
        ));
    }
    Verdict {
        target: target.triple().to_string(),
        acceptable: problems.is_empty(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_garbage_without_panicking() {
        assert_eq!(inspect(b""), Err(ElfError::Empty));
        assert!(matches!(
            inspect(b"#!/bin/sh\necho hi\n"),
            Err(ElfError::NotElf { .. })
        ));
        assert!(matches!(inspect(b"\x7fEL"), Err(ElfError::NotElf { .. })));
        assert_eq!(inspect(b"\x7fELF\x07"), Err(ElfError::BadClass(7)));
        assert!(matches!(
            inspect(b"\x7fELF\x02\x01\x01"),
            Err(ElfError::Malformed(_))
        ));
        // Every prefix of a plausible header must be refused cleanly, never panic.
        let mut header = [0u8; 64];
        header[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        for len in 0..header.len() {
            let _ = inspect(&header[..len]);
        }
    }
}
