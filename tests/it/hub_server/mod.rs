//! A loopback stand-in for the Hugging Face Hub, for tests/hub.rs: the refs API, the revision API,
//! and `resolve/` the way huggingface.co answers it (small files directly with `etag`; LFS files
//! as a 302 to a CDN path with `x-linked-etag` and `x-linked-size`; `x-repo-commit` on both;
//! byte ranges), plus injected faults.
//!
//! One thread serves one connection at a time and answers `Connection: close`, so the client
//! never holds an idle pooled connection the server would wait on. The thread stops when the
//! server is dropped, after `LIFETIME`, or after `MAX_CONNECTIONS`, whichever comes first.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

const LIFETIME: Duration = Duration::from_secs(120);
const MAX_CONNECTIONS: usize = 5_000;
const MAX_HEADER_LINES: usize = 100;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// One commit of a repo: file name → contents.
#[derive(Clone, Default)]
pub struct Commit {
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct HubRepo {
    /// Branch name → commit sha.
    pub branches: BTreeMap<String, String>,
    /// Commit sha → files.
    pub commits: BTreeMap<String, Commit>,
    /// When set, every request for this repo needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// A way to answer a request wrongly.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer with this status and a short body.
    Status(u16),
    /// Announce the full Content-Length, send this many body bytes, close.
    CutShort(usize),
    /// Send no Content-Length, this many body bytes, close (looks complete to HTTP).
    ShortNoLength(usize),
    /// Send the full length with one byte changed.
    Corrupt,
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Any,
    /// Only requests for a whole file or its tail (`Range: bytes=N-` or none): downloads, not
    /// metadata probes or header reads.
    Downloads,
}

struct Rule {
    path_part: String,
    target: Target,
    fault: Fault,
    times: usize,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

impl Logged {
    /// A request for a whole file or the rest of one.
    pub fn is_download(&self) -> bool {
        self.range.as_deref().is_none_or(|r| r.ends_with('-'))
    }
}

#[derive(Default)]
struct State {
    repos: HashMap<String, HubRepo>,
    rules: Vec<Rule>,
    log: Vec<Logged>,
    refs_body: Option<String>,
}

pub struct HubServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The sha256 of some bytes in lowercase hex: the LFS etag and the CDN path of a file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl HubServer {
    pub fn start(repos: HashMap<String, HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, url) = (state.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || serve(listener, &state, &stop, &url))
        };
        HubServer {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers the next `times` requests whose path contains `path_part` (and that `target`
    /// selects) with `fault`.
    pub fn fail(&self, path_part: &str, target: Target, fault: Fault, times: usize) {
        self.state.lock().unwrap().rules.push(Rule {
            path_part: path_part.to_string(),
            target,
            fault,
            times,
        });
    }

    /// Serves this body, verbatim, for every refs listing.
    pub fn set_refs_body(&self, body: &str) {
        self.state.lock().unwrap().refs_body = Some(body.to_string());
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests whose path contains `path_part`.
    pub fn count(&self, path_part: &str, downloads_only: bool) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(path_part) && (!downloads_only || r.is_download()))
            .count()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, state: &Mutex<State>, stop: &AtomicBool, base: &str) {
    let deadline = Instant::now() + LIFETIME;
    let mut served = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && served < MAX_CONNECTIONS {
        match listener.accept() {
            Ok((stream, _)) => {
                served += 1;
                // A broken connection fails only the request the client made on it.
                let _ = handle(stream, state, base);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => break,
        }
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let (mut range, mut authorization) = (None, None);
    for _ in 0..MAX_HEADER_LINES {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    Ok(Request {
        method,
        path,
        range,
        authorization,
    })
}

/// What to send back.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    fault: Option<Fault>,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            fault: None,
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Self {
        Reply::new(status, value.to_string()).header("Content-Type", "application/json")
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>, base: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let request = read_request(&stream)?;
    let reply = {
        let mut state = state.lock().unwrap();
        let logged = Logged {
            method: request.method.clone(),
            path: request.path.clone(),
            range: request.range.clone(),
        };
        let fault = take_fault(&mut state.rules, &logged);
        state.log.push(logged);
        match fault {
            Some(Fault::Status(status)) => Reply::new(status, format!("injected HTTP {status}")),
            fault => Reply {
                fault,
                ..route(&state, &request, base)
            },
        }
    };
    write_reply(stream, &request, reply)
}

fn take_fault(rules: &mut [Rule], request: &Logged) -> Option<Fault> {
    let rule = rules.iter_mut().find(|r| {
        r.times > 0
            && request.path.contains(&r.path_part)
            && (r.target == Target::Any || request.is_download())
    })?;
    rule.times -= 1;
    Some(rule.fault)
}

fn route(state: &State, request: &Request, base: &str) -> Reply {
    let path = request.path.replace("%2F", "/");
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return cdn(state, sha, request.range.as_deref());
    }
    let api = path.strip_prefix("/api/models/");
    let segments: Vec<&str> = api
        .unwrap_or(&path)
        .trim_start_matches('/')
        .split('/')
        .collect();
    if segments.len() < 3 {
        return Reply::new(404, "not found");
    }
    let repo_id = format!("{}/{}", segments[0], segments[1]);
    let Some(repo) = state.repos.get(&repo_id) else {
        return Reply::json(401, json!({"error": "Repository not found"}));
    };
    if let Some(token) = &repo.token {
        if request.authorization.as_deref() != Some(&format!("Bearer {token}")) {
            return Reply::json(
                401,
                json!({"error": "Invalid credentials in Authorization header"}),
            );
        }
    }
    let resolve = |rev: &str| -> Option<String> {
        repo.branches
            .get(rev)
            .cloned()
            .or_else(|| repo.commits.contains_key(rev).then(|| rev.to_string()))
    };
    let rest = segments[3..].join("/");
    match (api.is_some(), segments[2]) {
        (true, "refs") => match &state.refs_body {
            Some(body) => Reply::new(200, body.clone()).header("Content-Type", "application/json"),
            None => Reply::json(
                200,
                json!({
                    "branches": repo.branches.iter().map(|(name, sha)| json!({
                        "name": name, "ref": format!("refs/heads/{name}"), "targetCommit": sha
                    })).collect::<Vec<_>>(),
                    "tags": [],
                    "converts": [],
                }),
            ),
        },
        (true, "revision") => match resolve(&rest) {
            Some(sha) => Reply::json(
                200,
                json!({
                    "id": repo_id,
                    "sha": sha,
                    "siblings": repo.commits[&sha].files.keys()
                        .map(|f| json!({"rfilename": f})).collect::<Vec<_>>(),
                }),
            ),
            None => Reply::json(404, json!({"error": format!("Invalid rev id: {rest}")}))
                .header("X-Error-Code", "RevisionNotFound"),
        },
        (false, "resolve") => {
            let Some((rev, file)) = rest.split_once('/') else {
                return Reply::new(404, "not found");
            };
            let Some(sha) = resolve(rev) else {
                return Reply::json(404, json!({"error": "Revision Not Found"}))
                    .header("X-Error-Code", "RevisionNotFound");
            };
            let Some(bytes) = repo.commits[&sha].files.get(file) else {
                return Reply::json(404, json!({"error": "Entry not found"}))
                    .header("X-Error-Code", "EntryNotFound")
                    .header("x-repo-commit", sha);
            };
            let digest = sha256_hex(bytes);
            if file.ends_with(".safetensors") {
                // LFS: the Hub redirects to a CDN, naming the blob and its size on the way.
                Reply::new(302, Vec::new())
                    .header("Location", format!("{base}/cdn/{digest}"))
                    .header("x-repo-commit", sha)
                    .header("x-linked-etag", format!("\"{digest}\""))
                    .header("x-linked-size", bytes.len().to_string())
                    .header("ETag", format!("\"{}\"", &digest[..40]))
            } else {
                // A git blob: the etag is its (here: stand-in) 40-hex id.
                ranged(bytes, request.range.as_deref())
                    .header("x-repo-commit", sha)
                    .header("ETag", format!("\"{}\"", &digest[..40]))
            }
        }
        _ => Reply::new(404, "not found"),
    }
}

fn cdn(state: &State, sha: &str, range: Option<&str>) -> Reply {
    let bytes = state
        .repos
        .values()
        .flat_map(|r| r.commits.values())
        .flat_map(|c| c.files.values())
        .find(|bytes| sha256_hex(bytes) == sha);
    match bytes {
        Some(bytes) => ranged(bytes, range),
        None => Reply::new(404, "no such blob"),
    }
}

/// 200 with the whole file, or 206 with `Range: bytes=A-B` / `bytes=A-`.
fn ranged(bytes: &[u8], range: Option<&str>) -> Reply {
    let len = bytes.len();
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Reply::new(200, bytes.to_vec());
    };
    let (first, last) = spec.split_once('-').unwrap_or((spec, ""));
    let first: usize = first.parse().unwrap_or(usize::MAX);
    let last: usize = last
        .parse()
        .unwrap_or(len.saturating_sub(1))
        .min(len.saturating_sub(1));
    if first >= len || first > last {
        return Reply::new(416, Vec::new()).header("Content-Range", format!("bytes */{len}"));
    }
    Reply::new(206, bytes[first..=last].to_vec())
        .header("Content-Range", format!("bytes {first}-{last}/{len}"))
}

fn write_reply(mut stream: TcpStream, request: &Request, reply: Reply) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut body = reply.body;
    let mut send = body.len();
    let mut content_length = Some(body.len());
    match reply.fault {
        Some(Fault::CutShort(n)) => send = n.min(body.len()),
        Some(Fault::ShortNoLength(n)) => {
            send = n.min(body.len());
            content_length = None;
        }
        Some(Fault::Corrupt) if !body.is_empty() => {
            let middle = body.len() / 2;
            body[middle] ^= 0xff;
        }
        _ => {}
    }
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nConnection: close\r\n",
        reply.status
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(length) = content_length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if request.method != "HEAD" {
        stream.write_all(&body[..send])?;
    }
    stream.flush()
}
