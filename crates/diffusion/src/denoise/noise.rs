//! Seeded starting noise: SplitMix64 uniforms through Box–Muller.

use ndarray::Array4;

use ovdiff_core::rng::SplitMix64;

/// Unit Gaussian noise of `shape` from `seed`: SplitMix64 uniforms through
/// Box–Muller (both outputs of each pair are used, in order), computed in
/// f64 and rounded to f32. Deterministic everywhere; not torch's sequence.
pub fn gaussian_noise(seed: u64, shape: [usize; 4]) -> Array4<f32> {
    let mut out = Array4::<f32>::zeros(shape);
    gaussian_noise_into(
        seed,
        out.as_slice_mut()
            .expect("invariant: a new array is contiguous"),
    );
    out
}

/// [`gaussian_noise`] written into `out`: the same values as
/// `gaussian_noise(seed, shape)` for any shape of `out.len()` elements.
pub fn gaussian_noise_into(seed: u64, out: &mut [f32]) {
    let mut rng = SplitMix64::new(seed);
    let mut pairs = out.chunks_mut(2);
    for pair in &mut pairs {
        // u1 in (0, 1] so that ln(u1) is finite
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        pair[0] = (r * theta.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * theta.sin()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoise::oracle::{config, run};
    use crate::scheduler::{PredictionType, SchedulerKind, TimestepSpacing};

    #[test]
    fn noise_is_deterministic_and_standard() {
        let a = gaussian_noise(42, [2, 4, 16, 16]);
        let b = gaussian_noise(42, [2, 4, 16, 16]);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(a, gaussian_noise(43, [2, 4, 16, 16]));
        let n = a.len() as f64;
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.08 && (var - 1.0).abs() < 0.1, "{mean} {var}");
        // odd sizes use the first value of the last pair
        assert_eq!(gaussian_noise(42, [1, 1, 1, 3]).len(), 3);
        // and the whole loop is bit-reproducible
        let c = config(PredictionType::Epsilon, TimestepSpacing::Linspace);
        let (o1, _) = run(&c, SchedulerKind::DpmPlusPlus2M, 12, 0.5, 9);
        let (o2, _) = run(&c, SchedulerKind::DpmPlusPlus2M, 12, 0.5, 9);
        assert!(o1.iter().zip(&o2).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
