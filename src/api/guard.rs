//! What every request passes before a route sees it: the `Host` it names must be one the
//! service answers to (a DNS-rebinding page names its own), and an unsafe method must come from
//! the service's own origin (`Sec-Fetch-Site`, `Origin`). Every POST handler also takes its
//! body only as `Content-Type: application/json` (`ApiJson`, `NoFields`): a cross-site form
//! can send neither without a CORS preflight, which the service never grants. That check sits
//! in the handlers, after routing and the token, so a POST to a GET route answers 405 and one
//! without a token 401, as the OpenAPI document says. Clients that are not browsers (curl,
//! scripts, generated clients) send no `Origin` and pass.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};
use crate::config::serve::host_name;

/// The names the service answers to.
#[derive(Debug, Clone)]
pub struct Hosts {
    listen: SocketAddr,
    /// `None`: any (`allowed_hosts = ["*"]`).
    names: Option<Vec<String>>,
}

impl Hosts {
    /// The listen address, loopback names when it is loopback or unspecified, the machine's
    /// host name when it is unspecified, and the configured names.
    pub fn new(listen: SocketAddr, configured: Option<&[String]>) -> Hosts {
        let names = configured.map(|c| {
            let mut names = c.to_vec();
            if listen.ip().is_unspecified() {
                let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase();
                if !node.is_empty() {
                    names.push(node);
                }
            }
            names
        });
        Hosts { listen, names }
    }

    /// Whether a `Host` header value names this service.
    pub fn allows(&self, host: &str) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let name = host_name(host);
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let ip = self.listen.ip();
        if let Ok(asked) = bare.parse::<IpAddr>() {
            // An address literal cannot be rebound: a page at that address is this service.
            return ip.is_unspecified() || asked == ip || (asked.is_loopback() && ip.is_loopback());
        }
        let local = ip.is_loopback() || ip.is_unspecified();
        if local && (name == "localhost" || name.ends_with(".localhost")) {
            return true;
        }
        names.contains(&name)
    }
}

fn refuse(status: StatusCode, code: &str, message: String, hint: &str) -> ApiError {
    ApiError::new(status, code, message).hint(hint)
}

/// The checks, in order: Host, then for unsafe methods the origin.
pub async fn guard(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if host.is_empty() || !state.hosts.allows(host) {
        return Err(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!("this service does not answer to the host {host:?}"),
            "reach it by its listen address, or add the name to [http] allowed_hosts in the service's config",
        ));
    }
    let method = req.method();
    let unsafe_method = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if unsafe_method {
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if let Some(site) = site.filter(|s| s != "same-origin" && s != "none") {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!("a {site} request cannot change anything here"),
                "use the kitchen served by this service, or a client that is not a web page",
            ));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            let own = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
            if !own {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    format!("a request from the origin {origin:?} cannot change anything here"),
                    "use the kitchen served by this service, or a client that is not a web page",
                ));
            }
        }
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_a_loopback_service() {
        let h = Hosts::new(
            "127.0.0.1:8700".parse().unwrap(),
            Some(&["galley.example".into()]),
        );
        for ok in [
            "127.0.0.1:8700",
            "localhost:8700",
            "LOCALHOST",
            "[::1]:8700",
            "galley.example",
            "galley.example:443",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8700",
            "10.0.0.1:8700",
            "galley.example.evil",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let any = Hosts::new("127.0.0.1:8700".parse().unwrap(), None);
        assert!(any.allows("evil.example"));
        let open = Hosts::new("0.0.0.0:8700".parse().unwrap(), Some(&[]));
        assert!(open.allows("10.0.0.1:8700") && !open.allows("evil.example"));
    }
}
