//! The cost of worker time: prices from the `[cost]` table applied to the usage that
//! workers record per job.

use spillway_common::envelope::{CostLine, JobCost};
use spillway_common::ledger::UsageEntry;

use crate::config::CostConfig;

/// The configured prices, looked up per backend and GPU model.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    config: CostConfig,
}

impl PriceTable {
    pub fn new(config: CostConfig) -> Self {
        Self { config }
    }

    /// Returns the price of one worker-hour on `backend` with `gpus` GPUs of model
    /// `gpu_sku`, from the first matching `[[cost.prices]]` entry, or 0 without one.
    pub fn per_worker_hour(&self, backend: &str, gpu_sku: &str, gpus: u32) -> f64 {
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.config
            .prices
            .iter()
            .find(|price| {
                matches(&price.backend, backend_kind(backend)) && matches(&price.gpu, gpu_sku)
            })
            .map_or(0.0, |price| {
                price.per_worker_hour + price.per_gpu_hour * f64::from(gpus)
            })
    }

    /// Returns the cost of `worker_secs` of one kind of worker.
    pub fn cost(&self, backend: &str, gpu_sku: &str, gpus: u32, worker_secs: f64) -> f64 {
        self.per_worker_hour(backend, gpu_sku, gpus) * worker_secs / 3600.0
    }

    /// Prices a job's usage.
    pub fn job_cost(&self, usage: &[UsageEntry]) -> JobCost {
        let lines: Vec<CostLine> = usage
            .iter()
            .map(|entry| CostLine {
                backend: entry.backend.clone(),
                gpu_sku: entry.gpu_sku.clone(),
                gpus_per_worker: entry.gpus_per_worker,
                worker_secs: entry.worker_secs,
                gpu_secs: entry.gpu_secs(),
                cost: self.cost(
                    &entry.backend,
                    &entry.gpu_sku,
                    entry.gpus_per_worker,
                    entry.worker_secs,
                ),
            })
            .collect();
        JobCost {
            currency: self.config.currency.clone(),
            // An empty f64 sum is -0.0, which would print as "-0.0000".
            total: lines.iter().map(|line| line.cost).sum::<f64>() + 0.0,
            lines,
        }
    }
}

/// Returns the backend kind of a backend name: `batch/us-east-1/queue` is `batch`.
pub fn backend_kind(backend: &str) -> &str {
    backend.split('/').next().unwrap_or(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PriceConfig;

    fn table() -> PriceTable {
        let price = |backend: &str, gpu: &str, per_gpu_hour, per_worker_hour| PriceConfig {
            backend: backend.into(),
            gpu: gpu.into(),
            per_gpu_hour,
            per_worker_hour,
        };
        PriceTable::new(CostConfig {
            currency: "USD".into(),
            budget_per_hour: 0.0,
            budget_per_day: 0.0,
            prices: vec![
                price("batch", "NVIDIA A10G", 1.2, 0.1),
                price("slurm", "*", 0.5, 0.0),
                price("*", "cpu", 0.0, 0.04),
            ],
        })
    }

    #[test]
    fn first_matching_price_wins() {
        let table = table();
        assert_eq!(
            table.per_worker_hour("batch/us-east-1/q", "NVIDIA A10G", 2),
            2.5
        );
        assert_eq!(table.per_worker_hour("slurm", "NVIDIA A100", 4), 2.0);
        assert_eq!(table.per_worker_hour("slurm", "cpu", 0), 0.0);
        assert_eq!(table.per_worker_hour("local", "cpu", 0), 0.04);
        assert_eq!(table.per_worker_hour("batch", "NVIDIA L4", 1), 0.0);
    }

    #[test]
    fn job_cost_sums_lines() {
        let usage = [
            UsageEntry {
                backend: "slurm".into(),
                gpu_sku: "NVIDIA A100".into(),
                gpus_per_worker: 1,
                worker_secs: 7200.0,
            },
            UsageEntry {
                backend: "batch/us-east-1/q".into(),
                gpu_sku: "NVIDIA A10G".into(),
                gpus_per_worker: 1,
                worker_secs: 1800.0,
            },
        ];
        let cost = table().job_cost(&usage);
        assert_eq!(cost.lines[0].gpu_secs, 7200.0);
        assert!((cost.lines[0].cost - 1.0).abs() < 1e-9);
        assert!((cost.lines[1].cost - 0.65).abs() < 1e-9);
        assert!((cost.total - 1.65).abs() < 1e-9);
    }
}
