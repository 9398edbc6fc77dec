//! The inference timesteps of each diffusers scheduler for each `timestep_spacing`, and the σ table.

use super::config::{SchedulerConfig, TimestepSpacing};
use super::numpy::{np_arange_first, np_linspace};
use crate::{Error, Result};

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training step.
pub(super) fn karras_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

pub(super) fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Invalid(
            "the number of steps must be positive".into(),
        ));
    }
    if steps > config.num_train_timesteps {
        return Err(Error::Invalid(format!(
            "{steps} steps is more than the {} training timesteps",
            config.num_train_timesteps
        )));
    }
    Ok(())
}

pub(super) fn check_range(ts: &[i64], n_train: usize) -> Result<()> {
    if let Some(t) = ts.iter().find(|t| **t < 0 || **t >= n_train as i64) {
        return Err(Error::Invalid(format!(
            "timestep {t} lies outside the {n_train} training timesteps \
             (check steps_offset and timestep_spacing)"
        )));
    }
    Ok(())
}

/// `DDIMScheduler.set_timesteps`: integer timesteps, highest first.
///
/// * `linspace`: `round(linspace(0, N − 1, n))`;
/// * `leading`: `k·⌊N/n⌋ + steps_offset` for k = n − 1 … 0;
/// * `trailing`: `round(arange(N, 0, −N/n)) − 1`.
pub fn ddim_timesteps(
    n_train: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<i64> {
    let n = n_train as f64;
    let mut ts: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, n - 1.0, steps)
            .into_iter()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64)
                .map(|k| k * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_first(n, 0.0, -(n / steps as f64), steps)
            .into_iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    };
    if spacing != TimestepSpacing::Trailing {
        ts.reverse();
    }
    ts
}

/// `DPMSolverMultistepScheduler.set_timesteps`: integer timesteps, highest
/// first, from `n + 1` points of which the last (0) is dropped.
///
/// `last` is the number of usable training steps (N unless
/// `lambda_min_clipped` cuts the noisy end):
///
/// * `linspace`: `round(linspace(0, last − 1, n + 1))`, reversed, minus the
///   final 0;
/// * `leading`: `k·⌊last/(n + 1)⌋ + steps_offset` for k = n … 1;
/// * `trailing`: `round(arange(last, 0, −N/n)) − 1`.
pub fn dpm_timesteps(
    n_train: usize,
    last: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, last as f64 - 1.0, steps + 1)
                .into_iter()
                .map(|t| t.round_ties_even() as i64)
                .collect();
            v.reverse();
            v.truncate(steps);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (last / (steps + 1)) as i64;
            (1..=steps as i64)
                .rev()
                .map(|k| k * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange_first(last as f64, 0.0, -ratio, steps)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// `EulerDiscreteScheduler.set_timesteps`: `f32` timesteps (returned as
/// `f64`), highest first. `linspace` keeps fractional values
/// (`linspace(0, N − 1, n)` in `f32`); `leading` and `trailing` are the
/// integers of [`ddim_timesteps`].
pub fn euler_timesteps(
    n_train: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, n_train as f64 - 1.0, steps)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect();
            v.reverse();
            v
        }
        _ => ddim_timesteps(n_train, steps, spacing, steps_offset)
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_schedules() {
        use TimestepSpacing::*;
        let lead = ddim_timesteps(1000, 30, Leading, 1);
        assert_eq!(lead.len(), 30);
        assert_eq!(&lead[..4], &[958, 925, 892, 859]);
        assert_eq!(&lead[26..], &[100, 67, 34, 1]);
        assert!(lead.windows(2).all(|w| w[0] - w[1] == 33));
        let trail = ddim_timesteps(1000, 30, Trailing, 1);
        assert_eq!(
            trail,
            vec![
                999, 966, 932, 899, 866, 832, 799, 766, 732, 699, 666, 632, 599, 566, 532, 499,
                466, 432, 399, 366, 332, 299, 266, 232, 199, 166, 132, 99, 66, 32
            ]
        );
        let lin = ddim_timesteps(1000, 30, Linspace, 1);
        assert_eq!(
            lin,
            vec![
                999, 965, 930, 896, 861, 827, 792, 758, 723, 689, 655, 620, 586, 551, 517, 482,
                448, 413, 379, 344, 310, 276, 241, 207, 172, 138, 103, 69, 34, 0
            ]
        );
        assert_eq!(
            ddim_timesteps(1000, 10, Leading, 1),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        // half-way values round to even, as numpy: 1000 - 62.5k
        assert_eq!(
            ddim_timesteps(1000, 16, Trailing, 0),
            vec![999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61]
        );
        // numpy's arange would give a 62nd value (-1) here; we keep 61
        let t61 = ddim_timesteps(1000, 61, Trailing, 0);
        assert_eq!(t61.len(), 61);
        assert_eq!(&t61[58..], &[48, 32, 15]);
        assert_eq!(ddim_timesteps(1000, 1, Linspace, 0), vec![0]);
        assert_eq!(ddim_timesteps(1000, 1, Trailing, 0), vec![999]);
    }

    #[test]
    fn dpm_schedules() {
        use TimestepSpacing::*;
        let lin = dpm_timesteps(1000, 1000, 30, Linspace, 1);
        assert_eq!(
            lin,
            vec![
                999, 966, 932, 899, 866, 832, 799, 766, 733, 699, 666, 633, 599, 566, 533, 499,
                466, 433, 400, 366, 333, 300, 266, 233, 200, 166, 133, 100, 67, 33
            ]
        );
        let lead = dpm_timesteps(1000, 1000, 30, Leading, 1);
        assert_eq!(&lead[..3], &[961, 929, 897]);
        assert_eq!(*lead.last().unwrap(), 33);
        assert_eq!(lead.len(), 30);
        let trail = dpm_timesteps(1000, 1000, 30, Trailing, 1);
        assert_eq!(trail, ddim_timesteps(1000, 30, Trailing, 0));
        assert_eq!(
            dpm_timesteps(1000, 1000, 4, Linspace, 0),
            vec![999, 749, 500, 250] // 499.5 rounds to even
        );
    }
}
