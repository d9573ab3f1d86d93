//! Latency samples and their summary.

use std::time::Duration;

pub struct Samples {
    name: String,
    values: Vec<Duration>,
}

impl Samples {
    pub fn new(name: &str) -> Self {
        Samples {
            name: name.to_string(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.values.push(d);
    }

    pub fn from_nanos(name: &str, nanos: &[u64]) -> Self {
        Samples {
            name: name.to_string(),
            values: nanos.iter().map(|n| Duration::from_nanos(*n)).collect(),
        }
    }

    pub fn nanos(&self) -> Vec<u64> {
        self.values.iter().map(|d| d.as_nanos() as u64).collect()
    }

    pub fn renamed(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.values.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index]
    }

    /// `| name | runs | p50 | p99 | peer | peer p50 | peer p99 |`
    pub fn row(&self, peer: Option<&Samples>) -> String {
        let fmt = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let peer_cells = match peer {
            Some(p) => format!(
                "{} ({} runs) | {} | {}",
                p.name,
                p.values.len(),
                fmt(p.quantile(0.5)),
                fmt(p.quantile(0.99))
            ),
            None => " | | ".to_string(),
        };
        format!(
            "| {} | {} | {} | {} | {} |",
            self.name,
            self.values.len(),
            fmt(self.quantile(0.5)),
            fmt(self.quantile(0.99)),
            peer_cells
        )
    }

    /// `| name | runs | p50 | p99 |`
    pub fn row4(&self) -> String {
        let fmt = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        format!(
            "| {} | {} | {} | {} |",
            self.name,
            self.values.len(),
            fmt(self.quantile(0.5)),
            fmt(self.quantile(0.99))
        )
    }
}
