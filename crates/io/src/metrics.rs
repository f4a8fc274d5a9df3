//! Metrics in the Prometheus text format, as every role serves them.

use prometheus_client::registry::Registry;

/// A registry in the Prometheus text format.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}
