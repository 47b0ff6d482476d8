//! Independent f64 implementations of every loss, as plain loops over row-major slices.
#![allow(dead_code)]

/// Row-wise log-softmax of `sims / tau` (`m` rows of `n`).
pub fn log_softmax(sims: &[f64], n: usize, tau: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(sims.len());
    for row in sims.chunks_exact(n) {
        let max = row
            .iter()
            .map(|s| s / tau)
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|s| (s / tau - max).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|s| s / tau - lse));
    }
    out
}

/// `−mean_r log p(t_r | x_r)`.
pub fn instance(sims: &[f64], n: usize, tau: f64, targets: &[usize]) -> f64 {
    let lp = log_softmax(sims, n, tau);
    -targets
        .iter()
        .enumerate()
        .map(|(r, &t)| lp[r * n + t])
        .sum::<f64>()
        / targets.len() as f64
}

/// `λ · mean over samples and ordered pairs of KL(p_k ‖ p_j)`; rows sample-major, `k` views.
pub fn consistency(sims: &[f64], n: usize, tau: f64, views: usize, weight: f64) -> f64 {
    let lp = log_softmax(sims, n, tau);
    let samples = sims.len() / n / views;
    let mut total = 0.0;
    for s in 0..samples {
        for a in 0..views {
            for b in 0..views {
                if a == b {
                    continue;
                }
                let (ra, rb) = ((s * views + a) * n, (s * views + b) * n);
                for c in 0..n {
                    let pa = lp[ra + c].exp();
                    total += pa * (lp[ra + c] - lp[rb + c]);
                }
            }
        }
    }
    weight * total / (samples * views * (views - 1)) as f64
}

/// `−mean_r log Σ_{j: g_j = g_{t_r}} p(j | x_r)`.
pub fn merged(sims: &[f64], n: usize, tau: f64, targets: &[usize], groups: &[u32]) -> f64 {
    let lp = log_softmax(sims, n, tau);
    let mut total = 0.0;
    for (r, &t) in targets.iter().enumerate() {
        let p: f64 = (0..n)
            .filter(|&j| groups[j] == groups[t])
            .map(|j| lp[r * n + j].exp())
            .sum();
        total -= p.ln();
    }
    total / targets.len() as f64
}

/// NPID's NCE with a given normaliser `z`: `−log h(pos) − Σ log(1 − h(noise))`, mean over rows.
pub fn nce(pos: &[f64], noise: &[f64], k: usize, n_rows: usize, tau: f64, z: f64) -> f64 {
    let pn = 1.0 / n_rows as f64;
    let h = |s: f64| {
        let p = (s / tau).exp() / z;
        p / (p + k as f64 * pn)
    };
    let mut total = 0.0;
    for (r, &s) in pos.iter().enumerate() {
        total -= h(s).ln();
        for j in 0..k {
            total -= (1.0 - h(noise[r * k + j])).ln();
        }
    }
    total / pos.len() as f64
}

/// NPID's batch estimate of Z: `N · mean exp(s/τ)` over the noise similarities.
pub fn z_estimate(noise: &[f64], n_rows: usize, tau: f64) -> f64 {
    n_rows as f64 * noise.iter().map(|s| (s / tau).exp()).sum::<f64>() / noise.len() as f64
}

/// Central finite differences of `f` at `x` for the coordinates `coords`.
pub fn finite_diff(f: impl Fn(&[f64]) -> f64, x: &[f64], coords: &[usize], eps: f64) -> Vec<f64> {
    coords
        .iter()
        .map(|&c| {
            let mut hi = x.to_vec();
            let mut lo = x.to_vec();
            hi[c] += eps;
            lo[c] -= eps;
            (f(&hi) - f(&lo)) / (2.0 * eps)
        })
        .collect()
}
