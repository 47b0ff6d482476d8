//! Learning-rate schedules, as a function of fractional epoch progress.

use crate::config::{LrSchedule, OptimConfig};

/// The learning rate at `progress` epochs into a run of `epochs` (progress = epoch + step/steps).
pub fn learning_rate(optim: &OptimConfig, epochs: usize, progress: f64) -> f64 {
    match optim.schedule {
        LrSchedule::Step => {
            let passed = optim
                .milestones
                .iter()
                .filter(|&&m| progress >= m as f64)
                .count();
            optim.lr * optim.gamma.powi(passed as i32)
        }
        LrSchedule::Cosine => {
            let warmup = optim.warmup_epochs as f64;
            if progress < warmup {
                return optim.lr * (progress + 1e-3).min(warmup) / warmup;
            }
            let span = (epochs as f64 - warmup).max(1e-9);
            let t = ((progress - warmup) / span).clamp(0.0, 1.0);
            0.5 * optim.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_and_cosine_match_their_formulas() {
        let mut o = OptimConfig {
            schedule: LrSchedule::Step,
            milestones: vec![120, 160],
            ..OptimConfig::default()
        };
        assert_eq!(learning_rate(&o, 200, 0.0), 0.03);
        assert!((learning_rate(&o, 200, 130.5) - 0.003).abs() < 1e-12);
        assert!((learning_rate(&o, 200, 199.0) - 0.0003).abs() < 1e-12);
        o.schedule = LrSchedule::Cosine;
        assert_eq!(learning_rate(&o, 8, 0.0), 0.03);
        assert!((learning_rate(&o, 8, 4.0) - 0.015).abs() < 1e-12);
        assert!(learning_rate(&o, 8, 8.0).abs() < 1e-12);
        o.warmup_epochs = 2;
        assert!((learning_rate(&o, 10, 1.0) - 0.03 * 1.001 / 2.0).abs() < 1e-9);
        assert_eq!(learning_rate(&o, 10, 2.0), 0.03);
    }
}
