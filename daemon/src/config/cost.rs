//! Configuration of what worker time costs: the `[cost]` section with its price table
//! and the budgets that alerts compare spending with.

use serde::Deserialize;

/// Prices and budgets. Without prices every job costs 0, and the cost metrics stay 0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// Currency of every price and budget, such as `USD`. Only a label: no conversion.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Spending per hour above which the `SpillwayCostOverBudget` alert fires; 0 turns
    /// the alert off.
    #[serde(default)]
    pub budget_per_hour: f64,
    /// Spending per day above which the `SpillwayCostOverBudget` alert fires; 0 turns
    /// the alert off.
    #[serde(default)]
    pub budget_per_day: f64,
    /// One `[[cost.prices]]` table per backend and GPU model; the first match wins.
    #[serde(default)]
    pub prices: Vec<PriceConfig>,
}

/// The price of worker time on one backend and GPU model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Backend name (`slurm`, `local`, `batch`) or `*` for any.
    pub backend: String,
    /// GPU model as workers report it (`SPILLWAY_GPU_SKU`, such as `NVIDIA A100`),
    /// `cpu`, or `*` for any.
    #[serde(default = "any")]
    pub gpu: String,
    /// Price of one GPU for one hour, for workers that hold GPUs.
    #[serde(default)]
    pub per_gpu_hour: f64,
    /// Price of one worker for one hour, added to the GPU price; the whole price of a
    /// CPU-only worker.
    #[serde(default)]
    pub per_worker_hour: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            budget_per_hour: 0.0,
            budget_per_day: 0.0,
            prices: Vec::new(),
        }
    }
}

fn default_currency() -> String {
    "USD".into()
}

fn any() -> String {
    "*".into()
}

/// Lists every invalid value of the section with its key and the fix.
pub(super) fn problems(cost: &CostConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: String, value: String, fix: &str| {
        if !ok {
            problems.push(format!("  {key} = {value}: {fix}"));
        }
    };
    check(
        !cost.currency.is_empty() && cost.currency.chars().all(|c| c.is_ascii_alphabetic()),
        "cost.currency".into(),
        format!("{:?}", cost.currency),
        "use a currency code such as USD or EUR",
    );
    for (key, value) in [
        ("budget_per_hour", cost.budget_per_hour),
        ("budget_per_day", cost.budget_per_day),
    ] {
        check(
            value.is_finite() && value >= 0.0,
            format!("cost.{key}"),
            value.to_string(),
            "use 0 (no budget) or a positive amount",
        );
    }
    for (index, price) in cost.prices.iter().enumerate() {
        check(
            !price.backend.is_empty(),
            format!("cost.prices[{index}].backend"),
            "\"\"".into(),
            "name a backend (slurm, local, batch) or use \"*\"",
        );
        for (key, value) in [
            ("per_gpu_hour", price.per_gpu_hour),
            ("per_worker_hour", price.per_worker_hour),
        ] {
            check(
                value.is_finite() && value >= 0.0,
                format!("cost.prices[{index}].{key}"),
                value.to_string(),
                "use 0 or a positive price",
            );
        }
    }
    problems
}
