//! Prometheus metrics (`--monitoring_config_file` with `prometheus_config { enable: true }`),
//! served on the REST port at the configured path, as TF Serving does.
//!
//! The names are TF Serving's (see [`oxserve_core::metrics`], re-exported here with its recording
//! helpers); the registry is the process-wide one of the `metrics` facade, so the manager, the
//! batcher and both protocol adapters record into it.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use oxserve_proto::tensorflow::serving::MonitoringConfig;

pub use oxserve_core::metrics::*;

/// TF Serving's default metrics path, used when `prometheus_config.path` is empty.
pub const DEFAULT_PATH: &str = "/monitoring/prometheus/metrics";

/// How often recorded histogram samples are folded into their buckets (the exporter's default).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The installed Prometheus recorder and where it is served.
pub struct Prometheus {
    handle: PrometheusHandle,
    path: String,
}

impl Prometheus {
    /// Installs the process-wide Prometheus recorder when `config` enables it (`Ok(None)` when
    /// it does not). Call once, before models load, so that load metrics are recorded.
    pub fn install(config: &MonitoringConfig) -> Result<Option<Prometheus>, String> {
        let Some(prometheus) = config.prometheus_config.as_ref().filter(|p| p.enable) else {
            return Ok(None);
        };
        let path = if prometheus.path.is_empty() {
            DEFAULT_PATH.to_string()
        } else {
            prometheus.path.clone()
        };
        if !path.starts_with('/') {
            return Err(format!(
                "prometheus_config.path must start with '/': got {path:?}"
            ));
        }
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in histogram_buckets() {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), &buckets)
                .map_err(|err| format!("configuring the buckets of {name}: {err}"))?;
        }
        let handle = builder
            .install_recorder()
            .map_err(|err| format!("installing the Prometheus recorder: {err}"))?;
        // Histogram samples are held one by one until an upkeep folds them into buckets. The
        // exporter runs one on a timer only with its own HTTP listener, which the REST port
        // replaces here; without this thread, a server nobody scrapes grows with every request.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            })
            .map_err(|err| format!("starting the metrics upkeep thread: {err}"))?;
        Ok(Some(Prometheus { handle, path }))
    }

    /// The HTTP path the metrics are served at.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        tf_bucket_bounds(&self.handle.render())
    }
}

/// Writes each histogram bucket's `le` as TF Serving's exporter does (`absl::StrCat` of a
/// double: six significant digits, so `188.957` and `1.27482e+06`), not with the exporter's
/// full precision, so that `sum by (le)` over a fleet mixing oxserve and TF Serving adds up the
/// same buckets.
fn tf_bucket_bounds(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for line in page.split_inclusive('\n') {
        match bucket_bound(line) {
            Some((start, end)) => {
                let bound = &line[start..end];
                out.push_str(&line[..start]);
                match bound.parse::<f64>() {
                    Ok(value) if value.is_finite() => out.push_str(&six_digits(value)),
                    _ => out.push_str(bound),
                }
                out.push_str(&line[end..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Where the `le` value of a histogram bucket's sample line is: the exporter writes `le` last.
fn bucket_bound(line: &str) -> Option<(usize, usize)> {
    let (series, _) = line.split_once('{')?;
    if !series.ends_with("_bucket") {
        return None;
    }
    let labels_end = line.rfind("\"}")?;
    let start = line[..labels_end].rfind("le=\"")? + 4;
    Some((start, labels_end))
}

/// C's `%.6g`, which `absl::StrCat` uses for doubles: six significant digits, trailing zeros
/// dropped, in exponent form below 1e-4 and from 1e6.
fn six_digits(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    // The exponent is the one of the value rounded to six digits, as printf decides it.
    let scientific = format!("{value:.5e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim_fraction(mantissa),
            exponent.unsigned_abs()
        )
    } else {
        let decimals = (5 - exponent) as usize;
        trim_fraction(&format!("{value:.decimals$}")).to_string()
    }
}

fn trim_fraction(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_significant_digits_as_printf() {
        let cases = [
            (10.0, "10"),
            (32.4, "32.4"),
            (104.976, "104.976"),
            (188.956_8, "188.957"),
            (1_101.996_1, "1102"),
            (20_822.964_7, "20823"),
            (121_439.531, "121440"),
            (999_999.4, "999999"),
            (999_999.5, "1e+06"),
            (1_274_823.621_6, "1.27482e+06"),
            (1_474_755_971.296_1, "1.47476e+09"),
            (8192.0, "8192"),
            (0.000_123_456_7, "0.000123457"),
            (0.000_012_345_67, "1.23457e-05"),
            (1e100, "1e+100"),
        ];
        for (value, printed) in cases {
            assert_eq!(six_digits(value), printed, "{value}");
        }
    }

    #[test]
    fn bucket_bounds_rewritten_in_sample_lines_only() {
        let page = "# TYPE h histogram\n\
            h_bucket{model_name=\"a\\\",le=\\\"5\",API=\"x\",le=\"1274823.6216\"} 3\n\
            h_bucket{le=\"188.9568\"} 1\n\
            h_bucket{le=\"+Inf\"} 3\n\
            h_sum{model_name=\"a\"} 1274823.6216\n\
            h_count 3\n";
        let expected = "# TYPE h histogram\n\
            h_bucket{model_name=\"a\\\",le=\\\"5\",API=\"x\",le=\"1.27482e+06\"} 3\n\
            h_bucket{le=\"188.957\"} 1\n\
            h_bucket{le=\"+Inf\"} 3\n\
            h_sum{model_name=\"a\"} 1274823.6216\n\
            h_count 3\n";
        assert_eq!(tf_bucket_bounds(page), expected);
    }
}
