//! What the harness measures outside the controller: CPU and memory from `/proc`, Prometheus text, percentiles,
//! and kube-apiserver's own request counters.

use std::collections::BTreeMap;
use std::process::Command;

use kube::Client;
use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds a process has used (`utime` + `stime` of `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last ')' start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmHWM` (peak RSS) or `VmRSS`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Is a process with this pid still running a command line that mentions `name`? (A reaped process has no
/// `/proc` entry; a zombie has an empty command line.)
pub fn process_present(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains(name))
        .unwrap_or(false)
}

/// Sum of every sample of a metric in Prometheus/OpenMetrics text (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A metric's samples summed by the value of one label (`cause="x"` -> `x`), all other labels together.
pub fn metric_by_label(text: &str, name: &str, label: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let key = format!("{label}=\"");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((labels, value)) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')?.split_once('}')) else {
            continue;
        };
        let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let Some(of) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(key.as_str())?.strip_suffix('"'))
        else {
            continue;
        };
        *out.entry(of.to_owned()).or_default() += v as u64;
    }
    out
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `apiserver_request_total` of kube-apiserver's `/metrics`, summed by `"<VERB> <resource>[/<subresource>]"`.
pub async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let Ok(req) = axum::http::Request::get("/metrics").body(Vec::new()) else {
        return BTreeMap::new();
    };
    let Ok(text) = client.request_text(req).await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let mut key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        // Failed requests (409 conflicts above all) are counted apart.
        let code = label("code");
        if !code.starts_with('2') {
            key = format!("{key} {code}");
        }
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// What changed between two [`apiserver_requests`] readings (requests in between).
pub(super) fn diff_requests(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)).max(0.0) as u64))
        .filter(|(_, v)| *v > 0)
        .collect()
}

pub(super) fn is_write(key: &str) -> bool {
    ["POST ", "PUT ", "PATCH ", "DELETE "]
        .iter()
        .any(|v| key.starts_with(v))
}

/// p50 / p95 / p99 / max of a set of durations, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            n: values.len(),
            p50: percentile(&values, 50.0),
            p95: percentile(&values, 95.0),
            p99: percentile(&values, 99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

pub(super) fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_by_label_sums_over_the_other_labels() {
        let text = "# HELP x_total conflicts\nx_total{write=\"intent\",cause=\"a\"} 2\nx_total{write=\"result\",cause=\"a\"} 1\nx_total{write=\"result\",cause=\"b\"} 4\nx_totals{cause=\"a\"} 9\n";
        let got = metric_by_label(text, "x_total", "cause");
        assert_eq!(
            got,
            std::collections::BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 4)])
        );
        assert!(metric_by_label(text, "y_total", "cause").is_empty());
    }

    #[test]
    fn metric_sum_adds_label_sets_and_skips_prefixes() {
        let text = "# TYPE x counter\ncompute_operator_status_writes_total 12\ncompute_operator_status_writes_totalx 5\ncompute_operator_api_requests_total{endpoint=\"get\",code=\"200\"} 3\ncompute_operator_api_requests_total{endpoint=\"stop\",code=\"202\"} 4\n";
        assert_eq!(metric_sum(text, "compute_operator_status_writes_total"), 12.0);
        assert_eq!(metric_sum(text, "compute_operator_api_requests_total"), 7.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn proc_readers_see_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kib(me, "VmHWM").is_some_and(|k| k > 0));
        assert!(status_kib(me, "VmNope").is_none());
    }
}
