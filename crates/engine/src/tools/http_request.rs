//! `http_request`: one HTTP(S) request — `args: {method, url, headers, query, body}`.
//!
//! Safety: only http and https; hosts limited to the tool's `allow_hosts` (when set); loopback,
//! private, link-local and metadata addresses refused unless `allow_hosts` names the host — checked
//! on the resolved address by the client's own resolver, and for every redirect hop (at most
//! `max_redirects`, default 5; credentials are dropped when a redirect changes host). No proxy
//! from the environment is used (it would resolve names where we cannot check them). Connect and
//! whole-request timeouts; the answer is read up to `max_response_bytes` (default 1 MiB), then
//! cut with a marker or refused (`on_oversize`). A write (any method but GET/HEAD/OPTIONS) carries
//! `Idempotency-Key: run/step/call-N`. Status classes as the `http` kind: 429 → `rate_limited`
//! (honouring `Retry-After`), 408/5xx → `transient`, other 4xx → `permanent`.

use super::config::{Built, ToolConfig};
use super::net::{Allow, Resolver};
use super::{CallContext, Tool, ToolFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
const DEFAULT_REDIRECTS: u32 = 5;

struct HttpTool {
    client: reqwest::Client,
    /// A fixed endpoint, and the method its calls use, when the config gives them.
    endpoint: Option<reqwest::Url>,
    method: Option<String>,
    allow: Arc<Allow>,
    headers: Vec<(String, String)>,
    max_bytes: u64,
    refuse_oversize: bool,
    max_redirects: u32,
}

pub(crate) fn build(config: &ToolConfig) -> Result<Built, String> {
    if let Some(why) = config.allow_hosts.iter().find_map(|h| super::net::bad_host(h)) {
        return Err(why);
    }
    let endpoint = match &config.url {
        Some(url) => {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("`url` {url} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!("`url` {url} is not an http:// or https:// URL with a host"));
            }
            Some(parsed)
        }
        None => None,
    };
    let method = match &config.method {
        Some(m) if METHODS.contains(&m.to_ascii_uppercase().as_str()) => Some(m.to_ascii_uppercase()),
        Some(m) => return Err(format!("`method` {m} is not one of {}", METHODS.join(", "))),
        None => None,
    };
    // A fixed endpoint's host is the one allowed (and named) unless the list says otherwise.
    let hosts = match (&endpoint, config.allow_hosts.is_empty()) {
        (Some(url), true) => vec![url.host_str().unwrap_or_default().to_string()],
        _ => config.allow_hosts.clone(),
    };
    let allow = Arc::new(Allow::new(&hosts, config.deny_internal));
    let refuse_oversize = match config.on_oversize.as_deref() {
        None | Some("truncate") => false,
        Some("refuse") => true,
        Some(other) => return Err(format!("on_oversize is `{other}`; use `truncate` or `refuse`")),
    };
    crate::tls::init();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(Resolver { allow: allow.clone() }))
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms.unwrap_or(5_000)))
        .timeout(Duration::from_millis(config.timeout_ms.unwrap_or(30_000)))
        .build()
        .map_err(|e| format!("cannot set up its HTTP client: {e}"))?;
    let reaches = match (&endpoint, hosts.is_empty()) {
        (Some(url), _) => format!("to {url}"),
        (None, true) => "to any public host".to_string(),
        (None, false) => format!("to {} only", hosts.join(", ")),
    };
    let mut properties = serde_json::Map::new();
    if method.is_none() {
        let names: Vec<String> = METHODS.iter().flat_map(|m| [m.to_string(), m.to_ascii_lowercase()]).collect();
        properties.insert("method".into(), json!({"type": "string", "enum": names, "description": "default GET"}));
    }
    if endpoint.is_none() {
        properties.insert(
            "url".into(),
            json!({"type": "string", "pattern": "^[hH][tT][tT][pP][sS]?://", "description": "http:// or https://"}),
        );
    }
    properties.insert("headers".into(), json!({"type": "object", "additionalProperties": {"type": "string"}}));
    properties.insert(
        "query".into(),
        json!({"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}),
    );
    properties.insert("body".into(), json!({"description": "a string is sent as text, anything else as JSON"}));
    let required: Vec<&str> = if endpoint.is_none() { vec!["url"] } else { Vec::new() };
    Ok(Built {
        description: format!(
            "Sends one HTTP request ({reaches}) and returns {{status, headers, body, truncated}}; a JSON answer is \
             parsed into body."
        ),
        input_schema: json!({
            "type": "object",
            "required": required,
            "properties": properties,
            "additionalProperties": false
        }),
        effect: match method.as_deref() {
            Some("GET" | "HEAD" | "OPTIONS") => EffectClass::Read,
            _ => EffectClass::Write,
        },
        effect_note: method.is_none().then(|| "GET, HEAD and OPTIONS only read".into()),
        code: Arc::new(HttpTool {
            client,
            endpoint,
            method,
            allow,
            headers: config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            max_bytes: config.max_response_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            refuse_oversize,
            max_redirects: config.max_redirects.unwrap_or(DEFAULT_REDIRECTS),
        }),
    })
}

fn refused(message: String) -> Failure {
    Failure { code: Some("refused".into()), ..Failure::new(ErrorClass::Permanent, message) }
}

const METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

impl HttpTool {
    /// The call's method: the configured one, else the call's, else GET.
    fn method_of(&self, args: &Value) -> String {
        match &self.method {
            Some(m) => m.clone(),
            None => args.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase(),
        }
    }
}

impl Tool for HttpTool {
    fn normalize(&self, mut args: Value) -> Value {
        if let Some(Value::String(method)) = args.get_mut("method") {
            *method = method.to_ascii_uppercase();
        }
        args
    }

    fn precheck(&self, args: &Value) -> Result<(), Failure> {
        match (&self.endpoint, args.get("url").and_then(Value::as_str)) {
            (Some(url), _) => self.check(url),
            (None, Some(raw)) => match reqwest::Url::parse(raw) {
                Ok(url) => self.check(&url),
                Err(e) => Err(Failure::new(ErrorClass::Permanent, format!("args.url `{raw}` is not a URL: {e}"))),
            },
            (None, None) => Ok(()),
        }
    }

    fn effect(&self, declared: EffectClass, args: &Value) -> EffectClass {
        if matches!(self.method_of(args).as_str(), "GET" | "HEAD" | "OPTIONS") { EffectClass::Read } else { declared }
    }

    fn call<'a>(&'a self, args: &'a Value, ctx: CallContext<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let mut method = reqwest::Method::from_bytes(self.method_of(args).as_bytes())
                .map_err(|_| Failure::new(ErrorClass::Permanent, "args.method is not an HTTP method"))?;
            let mut url = match &self.endpoint {
                Some(url) => url.clone(),
                None => {
                    let raw = args.get("url").and_then(Value::as_str).unwrap_or_default();
                    reqwest::Url::parse(raw).map_err(|e| {
                        Failure::new(ErrorClass::Permanent, format!("args.url `{raw}` is not a URL: {e}"))
                    })?
                }
            };
            if let Some(Value::Object(query)) = args.get("query") {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in query {
                    pairs.append_pair(k, &v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                }
            }
            let mut headers = HeaderMap::new();
            let given = args.get("headers").and_then(Value::as_object).cloned().unwrap_or_default();
            for (k, v) in self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).chain(given) {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| Failure::new(ErrorClass::Permanent, format!("header name `{k}` is not valid")))?;
                let value = HeaderValue::from_str(v.as_str().unwrap_or_default()).map_err(|_| {
                    Failure::new(ErrorClass::Permanent, format!("the value of header `{k}` is not valid"))
                })?;
                headers.insert(name, value);
            }
            let mut body: Option<Vec<u8>> = match args.get("body") {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => {
                    headers.entry("content-type").or_insert(HeaderValue::from_static("text/plain; charset=utf-8"));
                    Some(text.clone().into_bytes())
                }
                Some(other) => {
                    headers.entry("content-type").or_insert(HeaderValue::from_static("application/json"));
                    Some(other.to_string().into_bytes())
                }
            };
            if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
                let key = HeaderValue::from_str(ctx.key)
                    .map_err(|_| Failure::new(ErrorClass::Permanent, "the call's key is not a header value"))?;
                headers.insert("idempotency-key", key);
            }
            let mut hops = 0;
            loop {
                self.check(&url)?;
                let mut request = self.client.request(method.clone(), url.clone()).headers(headers.clone());
                if let Some(bytes) = &body {
                    request = request.body(bytes.clone());
                }
                let response = request.send().await.map_err(|e| sent_error(&url, &e))?;
                let status = response.status().as_u16();
                let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
                match (status, location) {
                    (301 | 302 | 303 | 307 | 308, Some(location)) => {
                        if hops == self.max_redirects {
                            return Err(refused(format!(
                                "{url} redirected more than {} times; not followed further",
                                self.max_redirects
                            )));
                        }
                        hops += 1;
                        let next = url.join(&location).map_err(|e| {
                            Failure::new(ErrorClass::Permanent, format!("{url} redirected to `{location}`: {e}"))
                        })?;
                        if next.host_str() != url.host_str()
                            || next.port_or_known_default() != url.port_or_known_default()
                        {
                            for h in ["authorization", "cookie", "proxy-authorization"] {
                                headers.remove(h);
                            }
                        }
                        if status == 303 || (matches!(status, 301 | 302) && method != reqwest::Method::HEAD) {
                            method = reqwest::Method::GET;
                            body = None;
                            headers.remove("content-type");
                        }
                        url = next;
                    }
                    _ => return self.answer(url, response).await,
                }
            }
        })
    }
}

impl HttpTool {
    /// Refuses a URL before anything is sent: its scheme, its host against `allow_hosts`, and an
    /// address written as the host (names are checked when they resolve).
    fn check(&self, url: &reqwest::Url) -> Result<(), Failure> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(format!("{url}: only http:// and https:// are allowed")));
        }
        let Some(host) = url.host() else { return Err(refused(format!("{url} names no host"))) };
        let name = match &host {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.allow.host_allowed(&name) {
            return Err(refused(format!("host {name} is not in this tool's allow_hosts")));
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            self.allow.check(&name, ip).map_err(refused)?;
        }
        Ok(())
    }

    /// The answer, read up to the size cap, with its status classified.
    async fn answer(&self, url: reqwest::Url, mut response: reqwest::Response) -> Result<Value, Failure> {
        let status = response.status().as_u16();
        let mut headers = Map::new();
        for (k, v) in response.headers() {
            headers.insert(k.as_str().to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        }
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let json_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|t| t.contains("json"));
        let mut bytes = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| sent_error(&url, &e))? {
            let room = (self.max_bytes as usize).saturating_sub(bytes.len());
            if chunk.len() > room {
                if self.refuse_oversize {
                    return Err(refused(format!(
                        "{url} answered more than {} bytes (max_response_bytes); refused",
                        self.max_bytes
                    )));
                }
                bytes.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = match serde_json::from_str::<Value>(&text) {
            Ok(v) if json_type && !truncated => v,
            _ if truncated => Value::String(format!("{text}\n…[truncated at {} bytes]", self.max_bytes)),
            _ => Value::String(text),
        };
        let short = || -> String {
            let s = body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
            s.chars().take(200).collect()
        };
        match status {
            429 => {
                let mut f = Failure::new(ErrorClass::RateLimited, format!("{url} answered 429: {}", short()));
                f.retry_after_ms = Some(retry_after.map_or(1_000, |s| s.min(3_600) * 1_000));
                Err(f)
            }
            408 | 500..=599 => {
                Err(Failure::new(ErrorClass::Transient, format!("{url} answered {status}: {}", short())))
            }
            400..=499 => Err(Failure::new(ErrorClass::Permanent, format!("{url} answered {status}: {}", short()))),
            _ => Ok(
                json!({"status": status, "url": url.as_str(), "headers": headers, "body": body, "truncated": truncated}),
            ),
        }
    }
}

/// A request that failed on the way: refused by the resolver (permanent), timed out, or not
/// connected (transient).
fn sent_error(url: &reqwest::Url, e: &reqwest::Error) -> Failure {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(why) = err.downcast_ref::<super::net::Refused>() {
            return refused(why.0.clone());
        }
        source = err.source();
    }
    let class = if e.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Transient };
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        chain.push_str(&format!(": {err}"));
        source = err.source();
    }
    Failure::new(class, format!("request to {url} failed: {chain}"))
}
