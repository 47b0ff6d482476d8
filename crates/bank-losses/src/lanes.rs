//! Eight `f32` lanes as a plain array, with the operations of the host passes: bit for bit
//! those of `wide::f32x8` on the x86-64 baseline (SSE2), the exponential included.
//!
//! `wide` chooses its instructions when the crate is compiled, from the `target_feature`s of
//! the build: a build for the x86-64 baseline (what `cargo build` makes) runs each operation as
//! two 128-bit halves even on a processor with AVX2, and a build with AVX changes the results
//! (another order of the horizontal sum; with FMA, other roundings in the exponential). Plain
//! arrays leave the width to the compiler: inside a function that `multiversion` also compiles
//! for AVX2 and picks at run time (`host_objective`, `host_softmax`), each operation becomes one
//! 256-bit instruction, and since every lane is rounded the same way either way, the results are
//! the same bits on every x86-64 processor. On burn-flex's host step at N = 50,000 the step
//! with the consistency loss takes about a quarter less time with AVX2 (`docs/results.md`).
//!
//! Every function is `#[inline(always)]`: the width is decided in the function it lands in.

use std::ops::{Add, AddAssign, Mul, Sub};

/// Lanes of one [`Lanes`].
pub(crate) const LANES: usize = 8;

/// Eight `f32` lanes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Lanes(pub [f32; LANES]);

impl Lanes {
    /// All lanes 0.
    pub const ZERO: Self = Self([0.0; LANES]);

    /// All lanes `x`.
    #[inline(always)]
    pub fn splat(x: f32) -> Self {
        Self([x; LANES])
    }

    /// The lanes of `chunk`.
    ///
    /// # Panics
    /// When `chunk` does not hold exactly [`LANES`] values.
    #[inline(always)]
    pub fn load(chunk: &[f32]) -> Self {
        Self(chunk.try_into().expect("a chunk of LANES values"))
    }

    /// The lanes as an array.
    #[inline(always)]
    pub fn to_array(self) -> [f32; LANES] {
        self.0
    }

    /// `f` lane by lane.
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        let mut out = self.0;
        for x in &mut out {
            *x = f(*x);
        }
        Self(out)
    }

    /// `f` lane by lane over the pairs of `self`'s and `rhs`'s lanes.
    #[inline(always)]
    fn zip(self, rhs: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut out = self.0;
        for (x, y) in out.iter_mut().zip(rhs.0) {
            *x = f(*x, y);
        }
        Self(out)
    }

    /// The larger of each pair of lanes; a NaN lane of `rhs` gives `self`'s, a NaN of `self`
    /// gives `rhs`'s (SSE's `maxps` with `wide`'s NaN check), so a running maximum skips NaN.
    #[inline(always)]
    pub fn max(self, rhs: Self) -> Self {
        #[allow(clippy::eq_op)] // `y != y`: y is NaN.
        self.zip(rhs, |x, y| if y != y || x > y { x } else { y })
    }

    /// The sum of the lanes, `((l0 + l1) + l2) + l3` plus the same of `l4..l8`.
    #[inline(always)]
    pub fn reduce_add(self) -> f32 {
        let l = self.0;
        (((l[0] + l[1]) + l[2]) + l[3]) + (((l[4] + l[5]) + l[6]) + l[7])
    }

    /// `exp` of each lane: `wide`'s (after the reduction by `ln 2` in two parts, the Taylor
    /// polynomial of degree 7), within a few ulp; 0 below −103.63, `+∞` above 88.723, NaN on
    /// NaN.
    #[inline(always)]
    pub fn exp(self) -> Self {
        self.map(exp)
    }
}

/// One lane of [`Lanes::exp`], `wide::f32x8::exp`'s operations in order without FMA.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const P: [f32; 6] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];
    const LN2_HI: f32 = 0.693_359_4; // 355/512 = 0.693359375 exactly.
    const LN2_LO: f32 = -2.121_944_4e-4;
    let r = round_ties_even(x * std::f32::consts::LOG2_E);
    let big = r > 127.0;
    let scale = pow2n(if big { r - 127.0 } else { 0.0 });
    let reduced = (x - r * LN2_HI) - r * LN2_LO;
    let (t, t2) = (reduced, reduced * reduced);
    let t4 = t2 * t2;
    let poly = (P[3] * t + P[2]) * t2 + ((P[5] * t + P[4]) * t4 + (P[1] * t + P[0]));
    let e = (poly * t2 + t + 1.0) * scale * pow2n(if big { 127.0 } else { r });
    #[allow(clippy::eq_op)] // `x != x`: x is NaN.
    if x != x {
        f32::from_bits(0x7FC0_0101)
    } else if x > 88.723 {
        f32::INFINITY
    } else if x < -103.63 {
        0.0
    } else {
        e
    }
}

/// `y` rounded to the nearest integer, ties to even, for `|y| < 2²²` (SSE2's `cvtps2dq` in
/// its default rounding mode); larger values lose their last bits, which [`exp`] overrides.
#[inline(always)]
fn round_ties_even(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds away the fraction.
    (y + SHIFT) - SHIFT
}

/// `2^n` for an integer `n` (subnormal from −127 to −149, 0 below), as `wide` computes it.
/// The subnormal ones as `2^(n+64) · 2⁻⁶⁴`, exact, where `wide` shifts a bit into place: a
/// shift by a different count in each lane has no instruction before AVX2.
#[inline(always)]
fn pow2n(n: f32) -> f32 {
    /// `2^n` for `n` in `[−126, 127]`: the bits of `n + 127 + 2²³` put `n + 127` in the
    /// mantissa's low bits, shifted into the exponent field.
    #[inline(always)]
    fn normal(n: f32) -> f32 {
        const BIAS: f32 = 127.0 + 8_388_608.0;
        f32::from_bits((n + BIAS).to_bits() << 23)
    }
    if n >= -126.0 {
        normal(n)
    } else {
        // At −150 and below the product rounds to 0 (ties to even), as `wide` gives.
        let n = if n < -150.0 { -150.0 } else { n };
        normal(n + 64.0) * f32::from_bits(0x1F80_0000) // 2⁻⁶⁴
    }
}

impl Add for Lanes {
    type Output = Self;
    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        self.zip(rhs, |x, y| x + y)
    }
}

impl Sub for Lanes {
    type Output = Self;
    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        self.zip(rhs, |x, y| x - y)
    }
}

impl Mul for Lanes {
    type Output = Self;
    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        self.zip(rhs, |x, y| x * y)
    }
}

impl AddAssign for Lanes {
    #[inline(always)]
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wide::f32x8;

    /// `Lanes::exp` against `wide::f32x8::exp` (its instructions for this build: the x86-64
    /// baseline's when the tests are built as `cargo test` builds them) on `values`, eight at
    /// a time: how many differ, and the worst relative error of ours among them.
    fn compare_exp(values: &[f32]) -> (usize, f64) {
        let (mut differing, mut worst) = (0, 0.0f64);
        for chunk in values.chunks_exact(LANES) {
            let ours = Lanes::load(chunk).exp().to_array();
            let theirs = f32x8::new(chunk.try_into().unwrap()).exp().to_array();
            for ((&x, a), b) in chunk.iter().zip(ours).zip(theirs) {
                if a.to_bits() != b.to_bits() {
                    differing += 1;
                    let exact = f64::from(x).exp();
                    worst = worst.max(((f64::from(a) - exact) / exact).abs());
                }
            }
        }
        (differing, worst)
    }

    /// Every `step`-th f32 from `lo < 0` to `hi > 0` by their bit patterns: as dense near 0
    /// as far from it.
    fn float_range(lo: f32, hi: f32, step: usize) -> Vec<f32> {
        let negative = (0..=(-lo).to_bits())
            .step_by(step)
            .map(|b| -f32::from_bits(b));
        let positive = (1..=hi.to_bits()).step_by(step).map(f32::from_bits);
        let mut out: Vec<f32> = negative.chain(positive).collect();
        out.truncate(out.len() / LANES * LANES);
        out
    }

    /// Whether this build runs `wide`'s x86-64 baseline path, the one this module copies (the
    /// tests' build, unless RUSTFLAGS enable AVX or FMA): only there must the bits agree.
    fn exact_reference() -> bool {
        cfg!(all(
            target_arch = "x86_64",
            not(target_feature = "avx"),
            not(target_feature = "fma")
        ))
    }

    #[test]
    fn the_exponential_is_wides_bit_for_bit_over_its_whole_range() {
        // 1.4 million floats from −110 to 90: the underflow to 0, the subnormal results below
        // −87.3, the normal range, the scaled path above 88.03 and the overflow.
        let values = float_range(-110.0, 90.0, 1597);
        assert!(values.len() > 1_300_000 && values.iter().filter(|&&x| x < -87.5).count() > 1000);
        let (differing, worst) = compare_exp(&values);
        if exact_reference() {
            assert_eq!(differing, 0, "worst relative error {worst:e}");
        } else {
            assert!(
                worst < 1e-6,
                "{differing} differ, worst relative error {worst:e}"
            );
        }
    }

    #[test]
    fn the_exponential_where_a_softmax_uses_it_and_at_the_edges() {
        // 2²¹ evenly spaced values of z − max from −30 to 0 (τ ≥ 0.067 with unit vectors).
        let values: Vec<f32> = (0..1 << 21)
            .map(|i| -30.0 * i as f32 / (1 << 21) as f32)
            .collect();
        let (differing, worst) = compare_exp(&values);
        assert!(
            differing == 0 || (!exact_reference() && worst < 1e-6),
            "{differing} differ, worst relative error {worst:e}"
        );
        let edges = [
            f32::NEG_INFINITY,
            -1e4,
            -103.63,
            -103.62,
            -87.34,
            -0.0,
            0.0,
            88.0,
            88.722,
            88.724,
            f32::INFINITY,
            f32::MAX,
        ];
        for x in edges {
            let ours = Lanes::splat(x).exp().0[0];
            let exact = f64::from(x).exp();
            if exact < f64::from(f32::MIN_POSITIVE) {
                assert!(
                    ours >= 0.0 && f64::from(ours) <= 1.5 * exact.max(1e-45),
                    "{x}: {ours}"
                );
            } else if exact > f64::from(f32::MAX) {
                assert_eq!(ours, f32::INFINITY, "{x}");
            } else {
                assert!(
                    ((f64::from(ours) - exact) / exact).abs() < 3e-7,
                    "{x}: {ours}"
                );
            }
        }
        assert!(Lanes::splat(f32::NAN).exp().0[0].is_nan());
    }

    #[test]
    fn max_skips_nan_and_the_sum_keeps_wides_order() {
        let a = [1.0, f32::NAN, -0.0, 3.0, 5.0, -1.0, f32::NAN, 0.0];
        let b = [2.0, 7.0, 0.0, f32::NAN, 4.0, -2.0, f32::NAN, -0.0];
        let ours = Lanes(a).max(Lanes(b)).to_array();
        let theirs = f32x8::new(a).max(f32x8::new(b)).to_array();
        for (x, y) in ours.iter().zip(theirs) {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{ours:?} {theirs:?}"
            );
        }
        assert_eq!(ours[..2], [2.0, 7.0]);
        // A sum whose value depends on the order: 1e8 absorbs the ones before it is cancelled.
        let v = [1e8, 1.0, 1.0, -1e8, 1.0, 1.0, 1.0, 1.0];
        let expected = (((1e8f32 + 1.0) + 1.0) - 1e8) + 4.0;
        assert_eq!(Lanes(v).reduce_add(), expected);
        if exact_reference() {
            assert_eq!(Lanes(v).reduce_add(), f32x8::new(v).reduce_add());
        }
    }
}
