//! TLS for every HTTPS client of the process (model providers, `http_request`, MCP over HTTP):
//! rustls with the ring provider, installed once before the first client is built.

/// Installs the process's TLS provider (once; later calls do nothing).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one first: that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
