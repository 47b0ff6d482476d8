//! One training step against the bank (similarities, full-softmax instance loss, backward to the
//! features, bank update) at N = 50,000, D = 128, B·K = 512: through autodiff over the
//! log-softmax (`step_autodiff_…`), and with the closed-form gradient the trainer uses
//! (`step_closed_form_…`), next to a bare matmul of the same shape (the step needs two).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]
use bank_core::ViewLayout;
use bank_losses::{BankLogProbs, Positives, SoftmaxObjective, instance_loss};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use criterion::{Criterion, criterion_group, criterion_main};
use membank_benches::{Bench, StepInputs, step_inputs};

const N: usize = 50_000;
const D: usize = 128;
const TAU: f64 = 0.1;

type A = Autodiff<Bench>;

/// The step's tail, the same for both variants: ∂L/∂f read, the bank updated once per sample,
/// the device synchronised (GPU backends are asynchronous).
fn finish<B: Backend>(
    inputs: &mut StepInputs<Autodiff<B>>,
    f: Tensor<Autodiff<B>, 2>,
    grads: &<Autodiff<B> as AutodiffBackend>::Gradients,
    layout: ViewLayout,
    device: &B::Device,
) -> Tensor<B, 2> {
    let g = f.grad(grads).unwrap();
    inputs
        .bank
        .update(inputs.indices.clone(), f.detach(), layout.views)
        .unwrap();
    let _ = B::sync(device);
    g
}

fn train_step(c: &mut Criterion) {
    let device = Default::default();
    let layout = ViewLayout::new(256, 2);
    let mut inputs = step_inputs::<A>(N, D, layout, &device);
    let name = <Bench as Backend>::name(&device);
    let mut group = c.benchmark_group(format!("train_step/{name}"));
    group.sample_size(10);

    group.bench_function("step_autodiff_n50000_d128_bk512", |b| {
        b.iter(|| {
            let f = inputs.features.clone().require_grad();
            let lp = BankLogProbs::from_features(&inputs.bank, f.clone(), TAU).unwrap();
            let loss = instance_loss(&lp, inputs.indices.clone()).unwrap();
            finish(&mut inputs, f, &loss.backward(), layout, &device)
        })
    });

    let objective = SoftmaxObjective::new(TAU).unwrap();
    group.bench_function("step_closed_form_n50000_d128_bk512", |b| {
        b.iter(|| {
            let f = inputs.features.clone().require_grad();
            let out = objective
                .eval(
                    &inputs.bank.inner(),
                    f.clone().inner(),
                    inputs.indices.clone().inner(),
                    &Positives::Own,
                    layout,
                )
                .unwrap();
            // The trainer's surrogate: its backward hands ∂L/∂f to the model.
            let surrogate = (f.clone() * Tensor::from_inner(out.features_grad)).sum();
            finish(&mut inputs, f, &surrogate.backward(), layout, &device)
        })
    });

    let bank = inputs.bank.rows().inner();
    let f = inputs.features.inner();
    group.bench_function("matmul_512x128_by_128x50000", |b| {
        b.iter(|| {
            let out = f.clone().matmul(bank.clone().transpose());
            let _ = <Bench as Backend>::sync(&device);
            out
        })
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
