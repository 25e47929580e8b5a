//! Reading a service's `/metrics`: a small parser of the OpenMetrics text format, enough for
//! what the services expose (counters, gauges, histograms; no exemplars or timestamps).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use anyhow::{bail, ensure, Context as _, Result};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (with `_total`, `_bucket`, `_count`, `_sum` as exposed).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Each metric family's type (`counter`, `gauge`, `histogram`), by family name.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses an OpenMetrics text exposition; it must end with `# EOF`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Self::default();
        let mut eof = false;
        for (n, line) in text.lines().enumerate() {
            ensure!(!eof, "line {}: content after # EOF", n + 1);
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                if let (Some("TYPE"), Some(name), Some(kind)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    out.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            out.samples
                .push(sample(line).with_context(|| format!("line {}: {line}", n + 1))?);
        }
        ensure!(eof, "no # EOF at the end");
        Ok(out)
    }

    /// The value of the one sample named `name` whose labels include `labels`; `None` if there
    /// is none. Fails if several match.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => bail!(
                "{} samples of {name} match {labels:?}: {many:?}",
                many.len()
            ),
        }
    }

    /// Like [`Exposition::get`], 0 when absent (a family member never incremented), as long
    /// as the family `family` is declared.
    pub fn value(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        ensure!(
            self.types.contains_key(family),
            "no metric family {family} exposed"
        );
        Ok(self.get(name, labels)?.unwrap_or(0.0))
    }

    /// A counter's value (`<family>_total`), 0 when the labelled member is absent.
    pub fn counter(&self, family: &str, labels: &[(&str, &str)]) -> Result<f64> {
        ensure!(
            self.types.get(family).map(String::as_str) == Some("counter"),
            "{family} is not a counter: {:?}",
            self.types.get(family)
        );
        self.value(family, &format!("{family}_total"), labels)
    }

    /// A gauge's value; fails when absent.
    pub fn gauge(&self, family: &str, labels: &[(&str, &str)]) -> Result<f64> {
        ensure!(
            self.types.get(family).map(String::as_str) == Some("gauge"),
            "{family} is not a gauge: {:?}",
            self.types.get(family)
        );
        self.get(family, labels)?
            .with_context(|| format!("no sample of {family} with {labels:?}"))
    }

    /// A histogram's observation count (`<family>_count`), 0 when the member is absent.
    pub fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> Result<f64> {
        ensure!(
            self.types.get(family).map(String::as_str) == Some("histogram"),
            "{family} is not a histogram: {:?}",
            self.types.get(family)
        );
        let count = self.value(family, &format!("{family}_count"), labels)?;
        // The +Inf bucket holds every observation.
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        let bucket = self.value(family, &format!("{family}_bucket"), &inf)?;
        ensure!(
            bucket == count,
            "{family}{labels:?}: +Inf bucket {bucket} != count {count}"
        );
        Ok(count)
    }
}

fn sample(line: &str) -> Result<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => bail!("no value"),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=').context("label without =")?;
            let key = r[..eq].trim_start_matches(',').to_owned();
            r = r[eq + 1..]
                .strip_prefix('"')
                .context("label value not quoted")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            labels.insert(key, value);
            r = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Scrapes `http://<addr>/metrics`, checking the OpenMetrics content type.
pub async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> Result<Exposition> {
    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .error_for_status()?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "content type {content_type}"
    );
    Exposition::parse(&response.text().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP courier_x_requests Requests.
# TYPE courier_x_requests counter
courier_x_requests_total{status="200"} 4
courier_x_requests_total{status="401"} 1
# TYPE courier_x_partitions gauge
courier_x_partitions 32
# TYPE courier_x_seconds histogram
courier_x_seconds_sum{method="a b,\"c\""} 0.25
courier_x_seconds_count{method="a b,\"c\""} 2
courier_x_seconds_bucket{le="0.1",method="a b,\"c\""} 1
courier_x_seconds_bucket{le="+Inf",method="a b,\"c\""} 2
# EOF
"#;

    #[test]
    fn counters_gauges_and_histograms_are_read() -> Result<()> {
        let e = Exposition::parse(TEXT)?;
        assert_eq!(e.counter("courier_x_requests", &[("status", "200")])?, 4.0);
        assert_eq!(e.counter("courier_x_requests", &[("status", "401")])?, 1.0);
        assert_eq!(e.counter("courier_x_requests", &[("status", "503")])?, 0.0);
        assert!(e.counter("courier_x_requests", &[]).is_err(), "ambiguous");
        assert_eq!(e.gauge("courier_x_partitions", &[])?, 32.0);
        assert_eq!(
            e.histogram_count("courier_x_seconds", &[("method", "a b,\"c\"")])?,
            2.0
        );
        assert!(e.counter("courier_x_partitions", &[]).is_err(), "a gauge");
        assert!(e.counter("courier_missing", &[]).is_err());
        Ok(())
    }

    #[test]
    fn an_exposition_without_eof_is_refused() {
        assert!(Exposition::parse("# TYPE a gauge\na 1\n").is_err());
        assert!(Exposition::parse("a{b=\"1} 2\n# EOF\n").is_err());
    }
}
