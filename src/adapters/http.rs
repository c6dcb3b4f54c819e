//! The one HTTP client set-up shared by the Graph and Key Vault adapters and by the
//! rotator's own credential: rustls, a per-request timeout, optional extra trusted root
//! certificates (for TLS-inspecting proxies, private clouds, and the stand-ins), and a
//! size limit on every answer it reads.
//!
//! Bounded answers: a peer chooses how large its answer is, and one named by a
//! configuration (a vaultUrl, a graphUrl, an authority host) may be hostile. The clients
//! ask for no content coding and decode none (the few KiB the rotator reads gain nothing
//! from compression, and a decoder turns 2 MB into gigabytes), refuse an encoded answer,
//! and stop reading a body as soon as it passes the limit of what they are reading
//! ([`read_body`] for reqwest, [`azure_client_options`] for azure_core), so memory holds
//! at most one limit per request whatever the peer sends.

use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

/// The largest answer read through azure_core: Key Vault (a secret value is at most
/// 25 KiB, its JSON envelope a few hundred bytes more), the Entra token endpoint and the
/// managed-identity endpoint (a token answer is a few KiB). Far above any genuine answer.
pub const AZURE_BODY_LIMIT: usize = 1024 * 1024;

/// Extra CA certificates, PEM encoded, trusted in addition to the system's.
#[derive(Clone, Debug, Default)]
pub struct TlsTrust {
    pub extra_root_pems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("extra root certificate #{index} is not a valid PEM certificate: {detail}. Check tls.extraRootCertificates")]
    BadCertificate { index: usize, detail: String },
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// Builds a reqwest client (rustls) that trusts the system roots plus `trust`.
pub fn http_client(trust: &TlsTrust, timeout: Duration) -> Result<reqwest::Client, HttpSetupError> {
    let mut certificates = Vec::new();
    for (index, pem) in trust.extra_root_pems.iter().enumerate() {
        let bundle = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| HttpSetupError::BadCertificate { index, detail: e.to_string() })?;
        if bundle.is_empty() {
            return Err(HttpSetupError::BadCertificate { index, detail: "no certificate found".into() });
        }
        certificates.extend(bundle);
    }
    builder(timeout)
        .tls_certs_merge(certificates)
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

/// Builds a reqwest client for the managed-identity endpoint (IMDS at 169.254.169.254,
/// App Service's `IDENTITY_ENDPOINT` on the host): it never uses a proxy, because those
/// endpoints exist only on the machine's own link and a system proxy (`HTTP_PROXY`)
/// would otherwise receive the request and could answer with a token of its choosing.
/// They speak plain HTTP, so no extra trusted roots apply.
pub fn direct_http_client(timeout: Duration) -> Result<reqwest::Client, HttpSetupError> {
    builder(timeout)
        .no_proxy()
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        // No decoding even if a dependency turns reqwest's decoders on (Cargo unifies
        // features): without them reqwest sends no Accept-Encoding either.
        .no_gzip()
        .no_deflate()
        .no_brotli()
        .no_zstd()
}

/// azure_core client options that send through `client` and read at most
/// [`AZURE_BODY_LIMIT`] of any answer (used for Key Vault).
pub fn azure_client_options(client: reqwest::Client) -> azure_core::http::ClientOptions {
    bounded_azure_client_options(client, "vaultUrl", "check that vaultUrl points at an Azure Key Vault")
}

/// [`azure_client_options`] for the peer that the configuration field `setting` names
/// (for network failures), whose refusals end with `advice`: what to check.
pub fn bounded_azure_client_options(
    client: reqwest::Client,
    setting: &'static str,
    advice: &'static str,
) -> azure_core::http::ClientOptions {
    let transport = BoundedTransport {
        client,
        limit: AZURE_BODY_LIMIT,
        setting,
        advice,
    };
    azure_core::http::ClientOptions {
        transport: Some(azure_core::http::Transport::new(Arc::new(transport))),
        ..Default::default()
    }
}

/// Why an answer was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer sent more than the rotator reads, or encoded it.
    #[error(transparent)]
    Refused(#[from] RefusedBody),
    /// The connection failed while the body was being read.
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// An answer the rotator refuses to read. Names the peer, the request and the limit, never
/// the body.
#[derive(Debug, thiserror::Error)]
#[error("{origin} answered {request} with {what}; the rotator refuses {refusal}: {advice}")]
pub struct RefusedBody {
    /// `https://host[:port]`.
    pub origin: String,
    /// Method and path, without the query, e.g. `GET /secrets/smtp`.
    pub request: String,
    what: String,
    refusal: &'static str,
    advice: &'static str,
}

impl RefusedBody {
    fn too_large(url: &Url, method: &str, limit: usize, advice: &'static str) -> Self {
        Self::new(url, method, format!("a body over {}", human_size(limit)), "larger answers", advice)
    }

    fn encoded(url: &Url, method: &str, encoding: &str, advice: &'static str) -> Self {
        let what = format!("a body in content-encoding {encoding:?}, which it did not ask for");
        Self::new(url, method, what, "encoded answers (it decodes none)", advice)
    }

    fn new(url: &Url, method: &str, what: String, refusal: &'static str, advice: &'static str) -> Self {
        Self {
            origin: url.origin().ascii_serialization(),
            request: format!("{method} {}", url.path()),
            what,
            refusal,
            advice,
        }
    }
}

/// `4 MiB`, `64 KiB`, `100 bytes`.
fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether `encoding` (a `Content-Encoding` value) leaves the body as it is.
fn is_identity(encoding: &str) -> bool {
    encoding.split(',').all(|coding| {
        let coding = coding.trim();
        coding.is_empty() || coding.eq_ignore_ascii_case("identity")
    })
}

/// A body being read: refuses to grow past its limit, and is zeroized when dropped, also
/// when reading stops half-way. Reserves the whole limit up front when asked to, so a
/// body holding a secret is never copied by a reallocation (a copy the zeroizing would
/// miss).
struct BoundedBuffer {
    bytes: Zeroizing<Vec<u8>>,
    limit: usize,
}

impl BoundedBuffer {
    fn new(limit: usize) -> Self {
        Self { bytes: Zeroizing::new(Vec::new()), limit }
    }

    fn preallocated(limit: usize) -> Self {
        Self { bytes: Zeroizing::new(Vec::with_capacity(limit)), limit }
    }

    /// Appends `chunk`, or returns `false` (appending nothing) when it would pass the limit.
    fn push(&mut self, chunk: &[u8]) -> bool {
        if chunk.len() > self.limit - self.bytes.len() {
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }
}

/// Reads the body of `response` (a request of `method`), refusing it once it passes
/// `limit` bytes or when it is content-encoded. `advice` ends the refusal's message.
pub async fn read_body(
    response: reqwest::Response,
    method: &str,
    limit: usize,
    advice: &'static str,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    Ok(read_into(response, method, BoundedBuffer::new(limit), advice).await?.bytes)
}

/// [`read_body`] for an answer that holds a secret: the buffer is never reallocated (it
/// reserves `limit` up front, so keep `limit` small), so no copy escapes its zeroizing.
/// The chunks reqwest hands over are shared buffers it frees without zeroizing; they are
/// out of reach.
pub async fn read_secret_body(
    response: reqwest::Response,
    method: &str,
    limit: usize,
    advice: &'static str,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let buffer = BoundedBuffer::preallocated(limit);
    Ok(read_into(response, method, buffer, advice).await?.bytes)
}

async fn read_into(
    mut response: reqwest::Response,
    method: &str,
    mut buffer: BoundedBuffer,
    advice: &'static str,
) -> Result<BoundedBuffer, BodyError> {
    let url = response.url().clone();
    let encoding = response
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    if let Some(encoding) = encoding.filter(|e| !is_identity(e)) {
        return Err(RefusedBody::encoded(&url, method, &encoding, advice).into());
    }
    while let Some(chunk) = response.chunk().await? {
        if !buffer.push(&chunk) {
            return Err(RefusedBody::too_large(&url, method, buffer.limit, advice).into());
        }
    }
    Ok(buffer)
}

const CONTENT_ENCODING: azure_core::http::headers::HeaderName =
    azure_core::http::headers::HeaderName::from_static("content-encoding");

/// azure_core's transport over reqwest, reading each answer whole (as azure_core's
/// pipeline does anyway) but at most `limit` bytes of it, and no encoded answer.
///
/// It is also where each attempt's network failure is named (see [`super::network`]):
/// azure_core calls the transport once per attempt, and its logging policy logs each
/// failed attempt's error at info (`<== Failed response: { url, error }`), which then
/// carries the cause. A permanent cause (a name that does not resolve, an untrusted
/// certificate, a proxy refusing the tunnel) leaves as a non-transport error kind, which
/// azure_core's retry policy does not retry (it retries `Io` and `Connection` only), so it
/// fails at once instead of after a minute of backoff.
struct BoundedTransport {
    client: reqwest::Client,
    limit: usize,
    /// The configuration field naming the peer, e.g. `vaultUrl`.
    setting: &'static str,
    advice: &'static str,
}

impl std::fmt::Debug for BoundedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedTransport").field("limit", &self.limit).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for BoundedTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let response = self.client.execute_request(request).await.map_err(|e| self.name_network_failure(request, e))?;
        let (status, headers, mut body) = response.deconstruct();
        let url = request.url();
        let method = request.method().to_string();
        // Not retried by azure_core (it retries I/O and connection errors only): the same
        // peer would send the same answer.
        let refuse = |refused: RefusedBody| azure_core::Error::new(azure_core::error::ErrorKind::DataConversion, refused);
        let encoding = headers.get_optional_str(&CONTENT_ENCODING);
        if let Some(encoding) = encoding.filter(|e| !is_identity(e)) {
            return Err(refuse(RefusedBody::encoded(url, &method, encoding, self.advice)));
        }
        let mut buffer = BoundedBuffer::new(self.limit);
        while let Some(chunk) = body.next().await {
            if !buffer.push(&chunk?) {
                return Err(refuse(RefusedBody::too_large(url, &method, self.limit, self.advice)));
            }
        }
        // azure_core takes the body as a plain buffer and frees it without zeroizing (a
        // Key Vault value or a token answer: see `adapters::identity`).
        Ok(AsyncRawResponse::from_bytes(status, headers, std::mem::take(&mut *buffer.bytes)))
    }
}

impl BoundedTransport {
    /// `error` with its network cause named, and of a kind azure_core does not retry when
    /// the cause is permanent; unchanged when it has no network cause.
    fn name_network_failure(&self, request: &Request, error: azure_core::Error) -> azure_core::Error {
        let url = request.url();
        let Some(failure) = super::network::classify(url, self.setting, &error) else {
            return error;
        };
        let kind = if failure.is_permanent() { azure_core::error::ErrorKind::Other } else { error.kind().clone() };
        azure_core::Error::new(kind, failure)
    }
}

/// Sees every request an adapter sends (one call per attempt), for metrics. Never sees
/// bodies or headers, so it cannot leak a secret.
pub trait ApiObserver: Send + Sync {
    /// `service` is e.g. `graph` or `keyvault`; `status` is `None` when no answer came.
    fn observe(&self, service: &'static str, operation: &str, status: Option<u16>, elapsed: Duration);
}

/// An azure_core per-try policy reporting each Key Vault attempt to an [`ApiObserver`].
pub struct ObservingPolicy {
    pub service: &'static str,
    pub observer: Arc<dyn ApiObserver>,
}

impl std::fmt::Debug for ObservingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservingPolicy").field("service", &self.service).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl azure_core::http::policies::Policy for ObservingPolicy {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        // The operation is the HTTP method and the collection, e.g. `PUT secrets`: bounded,
        // and free of secret names.
        let collection = request.url().path_segments().and_then(|mut s| s.next()).unwrap_or("").to_string();
        let operation = format!("{} {collection}", request.method());
        let started = std::time::Instant::now();
        let result = match next.split_first() {
            Some((policy, rest)) => policy.send(ctx, request, rest).await,
            None => return Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Other, "no transport policy")),
        };
        let status = result.as_ref().ok().map(|r| u16::from(r.status()));
        self.observer.observe(self.service, &operation, status, started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_body_is_read_in_place_up_to_its_limit() {
        // A reallocation would leave a copy of the secret behind, outside the zeroized
        // buffer: the preallocated buffer must never move while it fills.
        let mut buffer = BoundedBuffer::preallocated(1000);
        let start = buffer.bytes.as_ptr();
        for _ in 0..10 {
            assert!(buffer.push(&[7; 100]));
        }
        assert_eq!(buffer.bytes.len(), 1000);
        assert_eq!(buffer.bytes.as_ptr(), start, "the buffer moved");
        assert!(!buffer.push(&[7]), "one byte past the limit is refused");
        assert_eq!(buffer.bytes.len(), 1000, "a refused chunk is not appended");
    }

    #[test]
    fn only_identity_content_coding_is_read() {
        assert!(is_identity("identity") && is_identity("") && is_identity("Identity, identity"));
        assert!(!is_identity("gzip") && !is_identity("identity, gzip") && !is_identity("br"));
    }
}
