//! How the peer's components put their numbers into its one prometheus-client
//! [`Registry`] (the daemon builds it and serves it on `/metrics`, see
//! `daemon/health.rs`).
//!
//! Each component keeps plain atomic counters (its `*Stats`) and registers a collector
//! (`register`) that reads them at every scrape: the components stay free of metric
//! types, and what is exported is exactly what they counted (monotonic for the life of
//! the process), as the scheduler does with its core's stats. Each component's
//! `register_metrics` names its own metrics without a prefix; the registry it is handed
//! carries the prefix.
//!
//! Not here: which metrics exist (each component's `register_metrics`), histograms, any
//! global or static registry.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One number read at scrape time.
#[derive(Debug, Clone)]
pub(crate) enum Sample {
    /// A counter: `name` without the prefix and without `_total` (the encoder adds it).
    Counter(&'static str, &'static str, u64),
    /// A gauge: `name` without the prefix.
    Gauge(&'static str, &'static str, i64),
    /// One counter family with one label: `name`, help, the label's name, and each
    /// label value with its count (e.g. `refused_total{reason="…"}`).
    LabeledCounters(
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, u64)>,
    ),
}

/// Reads `source` into samples at every scrape.
struct Reader<T> {
    source: T,
    read: fn(&T) -> Vec<Sample>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Reader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl<T: std::fmt::Debug + Send + Sync + 'static> Collector for Reader<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for sample in (self.read)(&self.source) {
            match sample {
                Sample::Counter(name, help, value) => {
                    let counter = ConstCounter::new(value);
                    let metric =
                        encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                    counter.encode(metric)?;
                }
                Sample::Gauge(name, help, value) => {
                    let gauge = ConstGauge::new(value);
                    let metric =
                        encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                    gauge.encode(metric)?;
                }
                Sample::LabeledCounters(name, help, label, values) => {
                    let mut family = encoder.encode_descriptor(
                        name,
                        help,
                        None,
                        prometheus_client::metrics::MetricType::Counter,
                    )?;
                    for (value, count) in values {
                        let labels = [(label, value)];
                        let metric = family.encode_family(&labels)?;
                        ConstCounter::new(count).encode(metric)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Registers a collector that calls `read(&source)` at every scrape.
pub(crate) fn register<T: std::fmt::Debug + Send + Sync + 'static>(
    registry: &mut Registry,
    source: T,
    read: fn(&T) -> Vec<Sample>,
) {
    registry.register_collector(Box::new(Reader { source, read }));
}

/// Every metric of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing metrics to a String cannot fail");
    out
}
