//! `galley verify FILE`.

use anyhow::Context;
use serde::Serialize;

use super::VerifyArgs;
use crate::elf::{self, ElfFacts, Verdict};
use crate::target::Target;

#[derive(Serialize)]
struct Output<'a> {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    facts: Option<&'a ElfFacts>,
    verdict: Verdict,
}

/// Inspects a file; returns whether it is acceptable for the target.
pub fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let target: Target = args.target.parse()?;
    let data = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let (facts, verdict) = match elf::inspect(&data) {
        Ok(facts) => {
            let verdict = elf::judge(&facts, target);
            (Some(facts), verdict)
        }
        Err(e) => (
            None,
            Verdict {
                target: target.triple().to_string(),
                acceptable: false,
                problems: vec![e.to_string()],
            },
        ),
    };
    let file = args.file.display().to_string();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Output {
                file,
                facts: facts.as_ref(),
                verdict: verdict.clone()
            })?
        );
    } else {
        if let Some(f) = &facts {
            println!("{file}");
            println!("  class:        {:?}", f.class);
            println!("  machine:      {}", f.machine);
            println!("  type:         {}", f.file_type);
            println!(
                "  interpreter:  {}",
                f.interpreter.as_deref().unwrap_or("none")
            );
            let needed = if f.needed.is_empty() && f.needed_count == 0 {
                "none".to_string()
            } else if f.needed.is_empty() {
                format!("{} libraries", f.needed_count)
            } else {
                f.needed.join(", ")
            };
            println!("  needed:       {needed}");
            println!("  libc:         {}", f.libc);
            println!(
                "  symbols:      {}",
                if f.symbols { "present" } else { "stripped" }
            );
            println!("  size:         {} bytes", f.size);
        }
        if verdict.acceptable {
            println!("acceptable for {}", verdict.target);
        } else {
            println!("refused for {}: {}", verdict.target, verdict.reason());
        }
    }
    Ok(verdict.acceptable)
}
