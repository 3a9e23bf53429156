//! The HTTP/1.1 side: reading a request head and body off a socket, writing the answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::*;

/// Reads the request line and headers. Ok(None): the peer closed without sending anything.
pub(super) fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Option<Head>, String> {
    let first = reader.fill_buf().map_err(|e| e.to_string())?;
    if first.is_empty() {
        return Ok(None);
    }
    // A TLS ClientHello (or other binary) waits for us: refuse at once instead of reading lines.
    if !first[0].is_ascii_uppercase() {
        return Err("not an HTTP/1.1 request".into());
    }
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let line = read_line(reader)?;
        total += line.len();
        if total > 256 * 1024 {
            return Err("oversized header".into());
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let request_line = lines.first().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.")
        || !target.starts_with('/')
        || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(format!("bad request line {request_line:?}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some(Head {
        method: method.into(),
        path: percent_decode(path),
        query: query.into(),
        headers,
    }))
}

/// Reads one CRLF (or LF) terminated line of at most 16 KiB, without its terminator.
pub(super) fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = 16 * 1024;
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut line);
    read.map_err(|e| e.to_string())?;
    if !line.ends_with(b"\n") {
        return Err("truncated or oversized line".into());
    }
    let line = String::from_utf8(line).map_err(|_| "line is not UTF-8")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads the body framed by Content-Length or `Transfer-Encoding: chunked` (none: empty).
pub(super) fn read_body(reader: &mut BufReader<TcpStream>, head: &Head) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    if head
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let line = read_line(reader)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {} // trailers, up to the empty line
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err("body too large".into());
            }
            let start = body.len();
            reader
                .by_ref()
                .take(size as u64)
                .read_to_end(&mut body)
                .map_err(io)?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).map_err(io)?;
            if body.len() - start != size || &crlf != b"\r\n" {
                return Err("truncated chunk".into());
            }
        }
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if len > MAX_BODY {
            return Err("body too large".into());
        }
        reader
            .by_ref()
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() != len {
            return Err("body shorter than Content-Length".into());
        }
    }
    Ok(body)
}

/// Writes the response, closes our side, and drains what the client still sends so the close
/// is graceful (a close with unread data would reset the connection before the client reads).
pub(super) fn finish(mut stream: TcpStream, resp: &Response, head_only: bool) {
    let reason = match resp.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", resp.status);
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n", resp.body.len()));
    let mut out = out.into_bytes();
    if !head_only && resp.status != 204 {
        out.extend_from_slice(&resp.body);
    }
    if stream.write_all(&out).and_then(|_| stream.flush()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = std::io::copy(&mut (&stream).take(64 << 20), &mut std::io::sink());
}
