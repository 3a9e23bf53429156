//! Dockerfile.runtime describes the same image galley builds for the authd fixture.

use galley::config::{CargoPackage, ProjectConfig};
use galley::spec::{BuildRequest, BuildSpec, GitFacts};

use crate::support::repo;

#[derive(Default, Debug)]
struct Parsed {
    workdir: Option<String>,
    copy_dest: Option<String>,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    expose: Vec<u16>,
    entrypoint: Vec<String>,
}

fn pairs(rest: &str) -> Vec<(String, String)> {
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("expected KEY=VALUE, got {kv:?}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (instr, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instr.to_ascii_uppercase().as_str() {
            "WORKDIR" => p.workdir = Some(rest.to_string()),
            "COPY" => p.copy_dest = rest.split_whitespace().last().map(str::to_string),
            "ENV" => p.env.extend(pairs(rest)),
            "LABEL" => p.labels.extend(pairs(rest)),
            "EXPOSE" => p.expose.extend(rest.split_whitespace().map(|x| x.trim_end_matches("/tcp").parse::<u16>().unwrap())),
            "ENTRYPOINT" => p.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT in exec form"),
            "ARG" | "FROM" => {}
            other => panic!("Dockerfile.runtime has {other}, which this equivalence check does not know: extend it"),
        }
    }
    p
}

#[test]
fn dockerfile_runtime_matches_the_authd_image_settings() {
    let text = std::fs::read_to_string(repo().join("Dockerfile.runtime")).unwrap();
    let d = parse(&text);
    let project = repo().join("fixtures/authd");
    let config = ProjectConfig::load(&project).unwrap();
    let package = CargoPackage::load(&project).unwrap();
    let req = BuildRequest {
        variants: vec!["sqlite".into()],
        version: Some("1.0.0".into()),
        source_date_epoch: Some("1".into()),
        ..Default::default()
    };
    let spec = BuildSpec::from_parts(
        &req,
        project,
        &config,
        &galley::spec::Facts::plain(
            &galley::config::workspace::Workspace::single(package),
            &GitFacts::default(),
        ),
    )
    .unwrap();
    let image = &spec.image;

    assert_eq!(d.workdir.as_deref(), Some(image.workdir.as_str()));
    assert_eq!(d.copy_dest, Some(format!("/app/{}", spec.binary)));
    assert_eq!(d.entrypoint, image.entrypoint);
    assert_eq!(d.expose, image.expose);
    let env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut denv = d.env.clone();
    denv.sort();
    assert_eq!(denv, env);
    let labels: Vec<(String, String)> = image
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut dlabels = d.labels.clone();
    dlabels.sort();
    assert_eq!(dlabels, labels);
    assert!(
        text.contains("FROM ${BASE}")
            && text.contains(&format!("ARG BASE={}", galley::spec::DEFAULT_BASE)),
        "the default base must match galley's"
    );
}
