//! The OpenAPI document as this service answers it. utoipa writes what the handlers say; this
//! completes it with what only the running service knows and what every route shares: the
//! configured projects and the variants they offer as enums, the version's grammar, the bounds
//! the handlers check, and the statuses any operation can answer (401 without a token, 400 for a
//! parameter that does not parse, 403 and 415 from the cross-site guard, 421 for a foreign
//! `Host`, 500). A generated client, or a property-based tester, then finds no request the
//! schema allows that the service refuses with 422, and no status it was not told of.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::config::serve::{ServeConfig, Source};
use crate::runner::source::offer;
use crate::store::BuildStatus;

/// The longest version a build takes: its tags (`{variant}-{version}` and the like) must stay
/// within the 128 characters of an OCI tag.
pub const MAX_VERSION_LEN: usize = 100;

/// A semantic version without build metadata (`+...`, which a tag cannot hold): numbers without
/// leading zeros (up to 19 digits, which always fit in 64 bits), pre-release identifiers of
/// letters, digits and `-`, numeric ones without leading zeros.
pub const VERSION_PATTERN: &str = r"^(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?$";

/// What the document says about this service's configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Every configured project.
    pub projects: Vec<String>,
    /// The variants a build may name, when they are known without a ref: every project is a
    /// directory and its galley.toml reads. `None` leaves the list open.
    pub variants: Option<Vec<String>>,
    /// Whether some project has a push repository (`push: true` is refused otherwise).
    pub push: bool,
    /// The projects with a push repository (the ones `/api/v1/registry/check` checks).
    pub pushing: Vec<String>,
    /// Whether some project is a git project (`ref` is refused otherwise).
    pub git: bool,
}

impl Facts {
    /// Reads the facts from the configuration and the projects' files (blocking: it reads
    /// galley.toml and Cargo.toml of every directory project).
    pub fn of(config: &ServeConfig) -> Facts {
        let mut variants = Some(BTreeSet::new());
        let mut git = false;
        for project in config.projects.values() {
            match &project.source {
                // A ref can offer other variants than HEAD: the list stays open.
                Source::Git(_) => {
                    git = true;
                    variants = None;
                }
                Source::Path(_) => match offer(&config.data_dir, project, None) {
                    Ok(o) => {
                        if let Some(all) = &mut variants {
                            all.extend(o.variants.into_iter().map(|(name, _)| name));
                        }
                    }
                    // The build's own validation says what is wrong with the project.
                    Err(_) => variants = None,
                },
            }
        }
        Facts {
            projects: config.projects.keys().cloned().collect(),
            variants: variants.map(|v| v.into_iter().collect()),
            push: config.projects.values().any(|p| p.push.is_some()),
            pushing: config
                .projects
                .values()
                .filter(|p| p.push.is_some())
                .map(|p| p.name.clone())
                .collect(),
            git,
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Completes `doc` (utoipa's document, as JSON) for a service with these facts.
pub fn complete(doc: &mut Value, facts: &Facts) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                operation(path, method, op, facts);
            }
        }
    }
    // What a client can do with a build it queued: a generated client's links, and the paths a
    // stateful tester follows.
    let links: Map<String, Value> = [
        ("GetBuild", "get_build"),
        ("Events", "events"),
        ("Log", "log"),
        ("Cancel", "cancel"),
        ("Rebuild", "rebuild"),
        ("Repro", "repro"),
        ("Rebase", "rebase"),
        ("Delete", "delete"),
    ]
    .into_iter()
    .map(|(name, op)| {
        let link = json!({"operationId": op, "parameters": {"id": "$response.body#/id"}});
        (name.to_string(), link)
    })
    .collect();
    if let Some(accepted) = doc
        .pointer_mut("/paths/~1api~1v1~1builds/post/responses/202")
        .and_then(Value::as_object_mut)
    {
        accepted.insert("links".into(), Value::Object(links));
    }
    if let Some(create) = doc.pointer_mut("/components/schemas/CreateBuild") {
        create_build(create, facts);
    }
}

/// The shared statuses and the bounds of one operation's parameters.
fn operation(path: &str, method: &str, op: &mut Value, facts: &Facts) {
    // `security: [{}]` marks the probes, which need no token.
    let public = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().all(|r| r.as_object().is_some_and(Map::is_empty)));
    let has_body = op.get("requestBody").is_some();
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params {
            parameter(path, p, facts);
        }
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for response in responses.values_mut() {
        if let Some(stream) = response.pointer_mut("/content/text~1event-stream") {
            stream["schema"] = stream_event();
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error_response(description));
    };
    if has_params {
        add(
            "400",
            "A path, query or header parameter that does not parse (a build id that is not a number)",
        );
    }
    if has_body {
        add(
            "422",
            "The body is JSON but not what the operation takes: `field` says where",
        );
    }
    if !public {
        add("401", "No token, or not a valid one (see WWW-Authenticate)");
    }
    if method == "post" || method == "delete" {
        add(
            "403",
            "A cross-site request (Origin or Sec-Fetch-Site of another site)",
        );
    }
    if method == "post" {
        add(
            "415",
            "The body is not Content-Type: application/json (also on actions without fields)",
        );
    }
    add(
        "421",
        "The Host header names a host this service does not answer to",
    );
    add("500", "The service failed to answer; its log says why");
}

/// One event of a build's stream as the frame carries it: its id (increasing, for
/// `Last-Event-ID`), its kind as the event name, and the event itself as JSON in `data`.
fn stream_event() -> Value {
    json!({
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"type": "string", "enum": crate::runner::event::BuildEvent::KINDS},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"type": "object"}
            }
        }
    })
}

/// The schema of one parameter, narrowed to what its handler takes.
fn parameter(path: &str, p: &mut Value, facts: &Facts) {
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let place = p
        .get("in")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // With several projects, the routes about one project need its name.
    let pick = place == "query" && name == "project" && path != "/api/v1/builds";
    if pick && facts.projects.len() > 1 {
        p["required"] = json!(true);
    }
    let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) else {
        return;
    };
    // utoipa writes an optional parameter as nullable; a path, query or header value is text,
    // never JSON's null.
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            schema.insert("type".into(), only);
        }
    }
    match (place.as_str(), name.as_str()) {
        // History keeps builds of projects that are no longer configured: any name filters it.
        // Only projects that push can be checked (others answer 409); with none, the list
        // stays whole.
        ("query", "project")
            if pick && path == "/api/v1/registry/check" && !facts.pushing.is_empty() =>
        {
            schema.insert("enum".into(), json!(facts.pushing));
        }
        ("query", "project") if pick => {
            schema.insert("enum".into(), json!(facts.projects));
        }
        ("query", "limit") => {
            schema.insert("minimum".into(), json!(1));
            schema.insert("maximum".into(), json!(200));
        }
        ("query", "status") => {
            let all: Vec<&str> = BuildStatus::ALL.iter().map(|s| s.as_str()).collect();
            schema.insert("enum".into(), json!(all));
        }
        ("header", "Idempotency-Key") => {
            // `builds::idempotency_key`: visible ASCII but `"`, bare or quoted.
            schema.insert(
                "pattern".into(),
                json!(r#"^([!#-~]{1,255}|"[!#-~]{1,255}")$"#),
            );
        }
        _ => {}
    }
}

/// A build request as `validate` takes it.
fn create_build(schema: &mut Value, facts: &Facts) {
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(project) = props.get_mut("project").and_then(Value::as_object_mut) {
        project.insert("enum".into(), json!(facts.projects));
        // `null` (left out) is taken only when there is one project.
        if facts.projects.len() == 1 {
            project.insert("enum".into(), json!([facts.projects[0], null]));
        }
    }
    if let Some(variants) = props.get_mut("variants").and_then(Value::as_object_mut) {
        variants.insert("minItems".into(), json!(1));
        variants.insert("maxItems".into(), json!(32));
        variants.insert("uniqueItems".into(), json!(true));
        if let (Some(names), Some(items)) = (
            &facts.variants,
            variants.get_mut("items").and_then(Value::as_object_mut),
        ) {
            items.insert("enum".into(), json!(names));
        }
    }
    if let Some(version) = props.get_mut("version").and_then(Value::as_object_mut) {
        version.insert("pattern".into(), json!(VERSION_PATTERN));
        version.insert("maxLength".into(), json!(MAX_VERSION_LEN));
    }
    if !facts.push {
        if let Some(push) = props.get_mut("push").and_then(Value::as_object_mut) {
            push.insert("enum".into(), json!([false, null]));
        }
    }
    if !facts.git {
        props.remove("ref");
    }
    if facts.projects.len() > 1 {
        if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
            if !required.iter().any(|r| r == "project") {
                required.push(json!("project"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "paths": {
                "/healthz": {"get": {"security": [{}], "responses": {"200": {"description": "up"}}}},
                "/api/v1/builds": {
                    "get": {"parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": ["integer", "null"]}},
                        {"name": "status", "in": "query", "schema": {"type": ["string", "null"]}}
                    ], "responses": {"200": {"description": "a page"}}},
                    "post": {"responses": {"202": {"description": "queued"}}}
                }
            },
            "components": {"schemas": {"CreateBuild": {
                "type": "object",
                "required": ["version"],
                "properties": {
                    "project": {"type": ["string", "null"]},
                    "variants": {"type": ["array", "null"], "items": {"type": "string"}},
                    "version": {"type": "string"},
                    "push": {"type": ["boolean", "null"]},
                    "ref": {"type": ["string", "null"]}
                }
            }}}
        })
    }

    #[test]
    fn statuses_every_operation_can_answer() {
        let mut d = doc();
        complete(&mut d, &Facts::default());
        let codes = |p: &str| -> Vec<String> {
            d.pointer(p)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            codes("/paths/~1healthz/get/responses"),
            ["200", "421", "500"]
        );
        assert_eq!(
            codes("/paths/~1api~1v1~1builds/get/responses"),
            ["200", "400", "401", "421", "500"]
        );
        assert_eq!(
            codes("/paths/~1api~1v1~1builds/post/responses"),
            ["202", "401", "403", "415", "421", "500"]
        );
        let limit = d
            .pointer("/paths/~1api~1v1~1builds/get/parameters/0/schema")
            .unwrap();
        assert_eq!(
            (limit["minimum"].clone(), limit["maximum"].clone()),
            (json!(1), json!(200))
        );
        assert_eq!(
            limit["type"],
            json!("integer"),
            "a query value is never null"
        );
        let status = d
            .pointer("/paths/~1api~1v1~1builds/get/parameters/1/schema/enum")
            .unwrap();
        assert_eq!(status.as_array().unwrap().len(), BuildStatus::ALL.len());
    }

    #[test]
    fn the_build_request_names_what_the_service_offers() {
        let facts = Facts {
            projects: vec!["tiny".into()],
            variants: Some(vec!["mysql".into(), "sqlite".into()]),
            push: false,
            pushing: Vec::new(),
            git: false,
        };
        let mut d = doc();
        complete(&mut d, &facts);
        let p = &d["components"]["schemas"]["CreateBuild"]["properties"];
        assert_eq!(p["project"]["enum"], json!(["tiny", null]));
        assert_eq!(p["variants"]["items"]["enum"], json!(["mysql", "sqlite"]));
        assert_eq!(p["variants"]["minItems"], json!(1));
        assert_eq!(p["push"]["enum"], json!([false, null]));
        assert!(p.get("ref").is_none(), "{p}");
        // Several projects, one a git project: the project is required, the variants open.
        let facts = Facts {
            projects: vec!["a".into(), "b".into()],
            variants: None,
            push: true,
            pushing: vec!["a".into()],
            git: true,
        };
        let mut d = doc();
        complete(&mut d, &facts);
        let s = &d["components"]["schemas"]["CreateBuild"];
        assert_eq!(s["required"], json!(["version", "project"]));
        assert_eq!(s["properties"]["project"]["enum"], json!(["a", "b"]));
        assert!(s["properties"]["variants"]["items"].get("enum").is_none());
        assert!(s["properties"]["push"].get("enum").is_none());
        assert!(s["properties"].get("ref").is_some());
    }

    /// The pattern takes exactly the versions `validate` takes (`semver`, no build metadata,
    /// a tag), up to 19-digit numbers.
    #[test]
    fn the_version_pattern_is_the_versions_a_build_takes() {
        let pattern = regex::Regex::new(VERSION_PATTERN).unwrap();
        let takes = |v: &str| {
            semver::Version::parse(v).is_ok_and(|p| p.build.is_empty())
                && crate::registry::reference::is_tag(v)
                && v.len() <= MAX_VERSION_LEN
        };
        let cases = [
            "1.4.2",
            "0.0.0",
            "2.0.0-rc.1",
            "1.0.0-0a",
            "1.0.0-x-y.7",
            "1.0.0--",
            "1.0.0-0",
            "9999999999999999999.0.0",
            "01.0.0",
            "1.0.0-01",
            "1.0.0+build",
            "1.0",
            "",
            "1.0.0-",
            "1.0.0-a..b",
            "1.0.0-a_b",
            "v1.0.0",
            " 1.0.0",
            "1.0.0\n",
            "1.2.3.4",
            "-1.0.0",
        ];
        for v in cases {
            assert_eq!(pattern.is_match(v), takes(v), "{v:?}");
        }
        let long = format!("1.0.0-{}", "a".repeat(MAX_VERSION_LEN - 6));
        assert!(pattern.is_match(&long) && takes(&long));
        assert!(!takes(&format!("{long}a")), "validate caps the length");
    }
}
