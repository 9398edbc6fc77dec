//! The numpy functions the schedulers mirror, with numpy's rounding, so that timesteps and noise tables equal diffusers' to the last bit.

/// `numpy.linspace(start, stop, num)`: `start + i·step`, the last value set
/// to `stop` exactly; `num = 1` gives `[start]`.
pub(super) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// The first `count` values of `numpy.arange(start, stop, step)` for floats:
/// `start`, `start + step`, then `start + i·δ` with `δ = (start + step) −
/// start` (numpy's fill rule).
///
/// numpy's length, `⌈(stop − start)/step⌉`, can overshoot by one through
/// rounding (e.g. 61 `trailing` steps of 1000 yield a 62nd timestep of −1 in
/// diffusers, which then indexes ᾱ[−1] = ᾱ_999); we keep exactly the `count`
/// timesteps that were asked for.
pub(super) fn np_arange_first(start: f64, stop: f64, step: f64, count: usize) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len.min(count))
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `numpy.interp(x, [0, 1, …, len − 1], table)`, clamped at both ends.
pub(super) fn interp(table: &[f64], x: f64) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let j = x.floor() as usize;
    let frac = x - j as f64;
    if frac == 0.0 {
        return table[j];
    }
    (table[j + 1] - table[j]) * frac + table[j]
}
