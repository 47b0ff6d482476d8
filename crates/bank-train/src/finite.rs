//! Whether a model and a bank hold only finite values: the check before a checkpoint is written,
//! so that a diverged run never replaces its last good checkpoint.

use bank_core::MemoryBank;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::EmbeddingNet;

/// Adds `sum(x · 0)` of every float tensor visited: 0 when every value is finite, NaN as soon as
/// one is NaN or ±∞ (∞ · 0 is NaN), so one scalar read checks them all.
struct ZeroSum<B: Backend> {
    total: Option<Tensor<B, 1>>,
}

impl<B: Backend> ZeroSum<B> {
    fn add<const D: usize>(&mut self, t: Tensor<B, D>) {
        let zero = t.mul_scalar(0.0).sum();
        self.total = Some(match self.total.take() {
            Some(total) => total + zero,
            None => zero,
        });
    }

    fn all_finite(self) -> bool {
        self.total.is_none_or(|t| all_finite(&t))
    }
}

impl<B: Backend> ModuleVisitor<B> for ZeroSum<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.add(param.val());
    }
}

/// `Some("model parameters")` or `Some("bank rows")` when that part holds a NaN or an infinity;
/// `None` when both are finite. Parameters include batch-norm running statistics.
pub fn non_finite_part<B: Backend>(
    model: &EmbeddingNet<B>,
    bank: &MemoryBank<B>,
) -> Option<&'static str> {
    let mut params = ZeroSum { total: None };
    model.visit(&mut params);
    if !params.all_finite() {
        return Some("model parameters");
    }
    let mut rows = ZeroSum { total: None };
    rows.add(bank.rows());
    if !rows.all_finite() {
        return Some("bank rows");
    }
    None
}

/// Whether every value of `t` is finite, by one scalar read: `sum(t · 0)` is 0, or NaN as soon
/// as one value is NaN or ±∞.
pub fn all_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    t.clone()
        .mul_scalar(0.0)
        .sum()
        .into_scalar()
        .elem::<f64>()
        .is_finite()
}
