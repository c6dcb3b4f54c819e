//! Names what failed on the network, from the error chain of a failed HTTP request: DNS
//! resolution of a host, a refused, timed out or reset connection to host:port, a proxy
//! (which one, from which variable) that refused, or a TLS failure (certificate issuer,
//! name or validity, and which trust store was used), each with the fix a user can make.
//!
//! reqwest and hyper keep these causes in the error's sources, several layers down, and
//! say only "error sending request" at the top; no maintained crate classifies them, so
//! this module walks the chain itself. It also says which causes are permanent: a name
//! that does not resolve, a certificate that is not trusted, a proxy that refuses the
//! tunnel will not heal in the next few seconds, so the callers stop instead of retrying.

use super::error_chain::causes;
use std::error::Error as StdError;
use std::fmt;
use url::Url;

/// A request that failed before any HTTP answer came, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NetworkFailure {
    host: String,
    port: u16,
    /// The configuration field that named the host, e.g. `azure.graphUrl`.
    setting: &'static str,
    proxy: Option<ProxyInUse>,
    cause: Cause,
}

/// The proxy a request went through, as reqwest chose it from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProxyInUse {
    /// `scheme://host:port`, without credentials.
    address: String,
    /// The environment variable that set it, e.g. `HTTPS_PROXY`.
    variable: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cause {
    /// The name did not resolve; the resolver's words.
    Dns(String),
    Refused,
    TimedOut,
    Reset,
    /// The proxy answered CONNECT with something other than 200.
    TunnelRefused,
    /// The proxy answered CONNECT with 407.
    ProxyAuthRequired,
    Tls(TlsCause),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum TlsCause {
    UnknownIssuer,
    NameMismatch,
    Expired,
    /// Any other TLS failure; rustls's words.
    Other(String),
}

impl NetworkFailure {
    /// Whether retrying within seconds cannot help: a name that does not resolve, a
    /// certificate that is not trusted or not for this host, a proxy refusing the tunnel.
    /// Refused, timed out and reset connections are transient.
    pub fn is_permanent(&self) -> bool {
        matches!(self.cause, Cause::Dns(_) | Cause::TunnelRefused | Cause::ProxyAuthRequired | Cause::Tls(_))
    }

    /// Whether the host's name (not a proxy's) did not resolve.
    pub fn is_name_resolution(&self) -> bool {
        matches!(self.cause, Cause::Dns(_)) && self.proxy.is_none()
    }

    /// The configuration field that named the host, e.g. `vaultUrl`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// Classifies `error`, a failed request to `url` (named by the configuration field
/// `setting`); `None` when its chain holds no network cause this module knows (an HTTP
/// answer, a body refused for its size, …).
pub fn classify(url: &Url, setting: &'static str, error: &(dyn StdError + 'static)) -> Option<NetworkFailure> {
    let chain = causes(error);
    let cause = dns(&chain)
        .or_else(|| tunnel(&chain))
        .or_else(|| tls(&chain))
        .or_else(|| io_kind(&chain))
        .or_else(|| timed_out(&chain))?;
    Some(NetworkFailure {
        host: url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string(),
        port: url.port_or_known_default().unwrap_or_default(),
        setting,
        proxy: proxy_for(url),
        cause,
    })
}

fn dns(chain: &[&(dyn StdError + 'static)]) -> Option<Cause> {
    // hyper-util says "dns error" and wraps the resolver's io::Error ("failed to lookup
    // address information: Name or service not known"); neither has a public type.
    let at = chain.iter().position(|e| {
        let text = e.to_string();
        text == "dns error" || text.contains("failed to lookup address")
    })?;
    let detail = chain[at..].last().map(|e| e.to_string()).unwrap_or_default();
    Some(Cause::Dns(detail))
}

fn tunnel(chain: &[&(dyn StdError + 'static)]) -> Option<Cause> {
    // hyper-util's TunnelError is not exported; its Display is stable text.
    chain.iter().find_map(|e| match e.to_string().as_str() {
        "tunnel error: unsuccessful" => Some(Cause::TunnelRefused),
        "tunnel error: proxy authorization required" => Some(Cause::ProxyAuthRequired),
        _ => None,
    })
}

fn tls(chain: &[&(dyn StdError + 'static)]) -> Option<Cause> {
    use rustls::CertificateError;
    let error = chain.iter().find_map(|e| e.downcast_ref::<rustls::Error>())?;
    Some(Cause::Tls(match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => TlsCause::UnknownIssuer,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TlsCause::NameMismatch,
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            TlsCause::Expired
        }
        other => TlsCause::Other(other.to_string()),
    }))
}

fn io_kind(chain: &[&(dyn StdError + 'static)]) -> Option<Cause> {
    use std::io::ErrorKind;
    chain.iter().filter_map(|e| e.downcast_ref::<std::io::Error>()).find_map(|io| match io.kind() {
        ErrorKind::ConnectionRefused => Some(Cause::Refused),
        ErrorKind::TimedOut => Some(Cause::TimedOut),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
            Some(Cause::Reset)
        }
        _ => None,
    })
}

fn timed_out(chain: &[&(dyn StdError + 'static)]) -> Option<Cause> {
    chain
        .iter()
        .filter_map(|e| e.downcast_ref::<reqwest::Error>())
        .any(|e| e.is_timeout())
        .then_some(Cause::TimedOut)
}

/// The proxy reqwest uses for `url`: the same environment variables, the same `NO_PROXY`
/// rules (hyper-util's matcher, which reqwest uses).
fn proxy_for(url: &Url) -> Option<ProxyInUse> {
    let uri: http::Uri = url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri)?;
    let proxy = intercept.uri();
    let address = format!(
        "{}://{}",
        proxy.scheme_str().unwrap_or("http"),
        proxy.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default()).unwrap_or_default()
    );
    Some(ProxyInUse {
        address,
        variable: proxy_variable(url.scheme()),
    })
}

/// Which variable hyper-util's matcher took the proxy from: the first one set of the
/// scheme's pair, else of `ALL_PROXY`'s.
fn proxy_variable(scheme: &str) -> &'static str {
    let scheme_pair: [&'static str; 2] =
        if scheme == "https" { ["HTTPS_PROXY", "https_proxy"] } else { ["HTTP_PROXY", "http_proxy"] };
    let set = |names: [&'static str; 2]| names.into_iter().find(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty()));
    set(scheme_pair).or_else(|| set(["ALL_PROXY", "all_proxy"])).unwrap_or(scheme_pair[0])
}

/// Where the TLS trust came from, for messages.
fn trust_store() -> String {
    let overrides: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .filter_map(|variable| std::env::var_os(variable).map(|value| format!("{variable}={}", value.to_string_lossy())))
        .collect();
    if overrides.is_empty() {
        "the system's trust store plus tls.extraRootCertificates".to_string()
    } else {
        format!("the system's trust store ({}) plus tls.extraRootCertificates", overrides.join(", "))
    }
}

impl fmt::Display for NetworkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { host, port, setting, .. } = self;
        let target = format!("{host}:{port} (from {setting})");
        if let Some(ProxyInUse { address, variable }) = &self.proxy {
            let proxy = format!("the proxy {address} (from {variable})");
            let bypass = format!("check {variable}, or add {host} to NO_PROXY to connect directly");
            return match &self.cause {
                Cause::Dns(detail) => write!(f, "DNS resolution failed for {proxy}, used for {target}: {detail}; {bypass}"),
                Cause::Refused => write!(f, "{proxy} refused the connection, used for {target}; {bypass}"),
                Cause::TimedOut => write!(f, "timed out through {proxy} to {target}; {bypass}"),
                Cause::Reset => write!(f, "the connection through {proxy} to {target} was reset; {bypass}"),
                Cause::TunnelRefused => write!(
                    f,
                    "{proxy} refused to open a tunnel (CONNECT) to {target}: have the proxy allow {host}:{port}, or {bypass}"
                ),
                Cause::ProxyAuthRequired => write!(
                    f,
                    "{proxy} requires authentication (407) for {target}: put its credentials in {variable} (http://user:password@host:port)"
                ),
                Cause::Tls(tls) => write!(f, "TLS failed with {target} through {proxy}: {}", tls_text(tls, host, setting, true)),
            };
        }
        let egress = format!("check firewall egress to {host}:{port}, or set HTTPS_PROXY if this machine reaches the internet through a proxy");
        match &self.cause {
            Cause::Dns(detail) => write!(
                f,
                "DNS resolution failed for host {host} (port {port}, from {setting}): {detail}; check the host name in {setting} and this machine's DNS, or set HTTPS_PROXY if only a proxy resolves outside names"
            ),
            Cause::Refused => write!(f, "connection refused by {target}: nothing listens there or a firewall rejects it; check the port in {setting}, or {egress}"),
            Cause::TimedOut => write!(f, "timed out connecting to or waiting for {target}: no answer; {egress}"),
            Cause::Reset => write!(f, "the connection to {target} was reset; {egress}"),
            Cause::TunnelRefused | Cause::ProxyAuthRequired => write!(f, "a proxy refused the connection to {target}; check HTTPS_PROXY and NO_PROXY"),
            Cause::Tls(tls) => write!(f, "TLS failed with {target}: {}", tls_text(tls, host, setting, false)),
        }
    }
}

fn tls_text(cause: &TlsCause, host: &str, setting: &str, proxied: bool) -> String {
    let inspecting = if proxied { "the proxy may inspect TLS: " } else { "if a TLS-inspecting proxy sits in between, " };
    match cause {
        TlsCause::UnknownIssuer => format!(
            "the certificate's issuer is not trusted by {}; {inspecting}add its CA certificate to tls.extraRootCertificates",
            trust_store()
        ),
        TlsCause::NameMismatch => format!(
            "the certificate is not valid for the name {host}; check the host name in {setting} ({inspecting}its certificate names another host)"
        ),
        TlsCause::Expired => format!("the certificate has expired (checked against {})", trust_store()),
        TlsCause::Other(detail) => format!("{detail} (trusted: {})", trust_store()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_an_io_error_wraps_is_part_of_the_chain() {
        // io::Error::source() skips its inner error; a rustls error lives exactly there.
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(inner);
        let url = Url::parse("https://vault.example:8443/").unwrap();
        let failure = classify(&url, "vaultUrl", &io).expect("classified");
        assert!(failure.is_permanent());
        let text = failure.to_string();
        assert!(text.contains("vault.example:8443 (from vaultUrl)") && text.contains("tls.extraRootCertificates"), "{text}");
    }

    #[test]
    fn refused_and_timed_out_connections_are_transient() {
        let url = Url::parse("https://graph.example/").unwrap();
        for kind in [std::io::ErrorKind::ConnectionRefused, std::io::ErrorKind::TimedOut, std::io::ErrorKind::ConnectionReset] {
            let failure = classify(&url, "azure.graphUrl", &std::io::Error::from(kind)).expect("classified");
            assert!(!failure.is_permanent(), "{kind:?}");
            assert!(failure.to_string().contains("graph.example:443"), "{failure}");
        }
    }
}
