//! Listing a repository's tags (`GET /v2/<name>/tags/list`, following `Link` pages).

use reqwest::header::LINK;
use reqwest::StatusCode;

use super::client::{read_bounded, Client, Step};
use super::{Reference, RegistryError, RegistryOptions};

/// The most pages followed: 100 pages of 1000 tags is more than any repository galley pushes to.
const MAX_PAGES: usize = 100;

/// Every tag of `repo`; an empty list when the repository does not exist yet.
pub fn list_tags(
    repo: &Reference,
    options: &RegistryOptions,
) -> Result<Vec<String>, RegistryError> {
    let credential = options.credential_for(&repo.registry)?;
    let scopes = vec![format!("repository:{}:pull", repo.repository)];
    let client = Client::new(&repo.registry, repo.api_host(), scopes, options, credential)?;
    let mut url = client.url(&format!("/v2/{}/tags/list?n=1000", repo.repository));
    let step = Step {
        repository: &repo.repository,
        what: "list tags".into(),
    };
    let mut tags = Vec::new();
    for _ in 0..MAX_PAGES {
        let this = url.clone();
        let resp = client.send(&step, &|http| Ok(http.get(this.clone())))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(tags);
        }
        if !resp.status().is_success() {
            return Err(client.status_error(&step, resp));
        }
        let next = resp
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split(';').next())
            .map(|l| {
                l.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            });
        let answered = resp.url().clone();
        let body = read_bounded(resp, 16 << 20);
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| RegistryError::Invalid {
                registry: repo.registry.clone(),
                repository: repo.repository.clone(),
                what: "the tag list is not JSON".into(),
            })?;
        tags.extend(
            v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string)),
        );
        match next {
            Some(n) => {
                url = client.resolve_location(&answered, &n).map_err(|what| {
                    RegistryError::Invalid {
                        registry: repo.registry.clone(),
                        repository: repo.repository.clone(),
                        what,
                    }
                })?
            }
            None => return Ok(tags),
        }
    }
    Ok(tags)
}
