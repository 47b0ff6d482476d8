//! When a checkpoint is due inside an epoch: every `checkpoint.every_steps` optimiser steps
//! and/or every `checkpoint.every_minutes` minutes since the last checkpoint.

use std::time::{Duration, Instant};

use crate::config::CheckpointConfig;

/// The in-epoch checkpoint cadence of a run.
pub(crate) struct StepCheckpoints {
    every_steps: usize,
    every: Option<Duration>,
    last: Instant,
}

impl StepCheckpoints {
    /// The cadence of `config`, counting time from now.
    pub(crate) fn new(config: &CheckpointConfig) -> Self {
        Self {
            every_steps: config.every_steps,
            every: (config.every_minutes > 0.0)
                .then(|| Duration::from_secs_f64(config.every_minutes * 60.0)),
            last: Instant::now(),
        }
    }

    /// Whether a checkpoint is due after global step `step`.
    pub(crate) fn due(&self, step: usize) -> bool {
        (self.every_steps > 0 && step.is_multiple_of(self.every_steps))
            || self.every.is_some_and(|d| self.last.elapsed() >= d)
    }

    /// A checkpoint was just written.
    pub(crate) fn saved(&mut self) {
        self.last = Instant::now();
    }
}
