//! Process-wide TLS setup.

use std::sync::Once;

/// Installs ring as the rustls crypto provider, once. The HTTP clients are built without a provider
/// of their own so that the binary carries one TLS stack (ring, shared with the kube client).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed the same provider first; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
