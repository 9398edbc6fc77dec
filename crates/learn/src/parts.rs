//! Part-level clustering: a deterministic K-means (greedy k-means++ seeding, Lloyd iterations).
//!
//! OVDiff (`gen_proto_vit.py`, `kmeans_fn`) clusters all masked patch tokens of
//! a class with scikit-learn's `KMeans(n_clusters=32, random_state=0,
//! n_init="auto")`: one greedy k-means++ seeding followed by Lloyd
//! iterations. This module does the same without a random-number crate and
//! with a bit-for-bit reproducible result:
//!
//! * randomness comes from [`SplitMix64`], seeded by the caller;
//! * squared distances use the expansion `‖x − c‖² = ‖x‖² + ‖c‖² − 2 x·c`, the
//!   `x·c` block being one matrix product (`ndarray`'s `dot` /
//!   [`general_mat_mul`], i.e. the blocked SIMD GEMM of `matrixmultiply`);
//! * every reduction (centroid sums, potentials) is a plain sequential loop
//!   in point order, so the same input and seed give the same output on the
//!   same machine. (`matrixmultiply` picks its kernel from the CPU's
//!   features at run time, so two machines with different SIMD support may
//!   round differently.)

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, Axis};
use ovdiff_core::rng::SplitMix64;

/// Default cap on Lloyd iterations.
///
/// Lloyd's algorithm removes almost all of its objective in the first ten
/// iterations; later ones only trade boundary patches between neighbouring
/// parts. On 32 000 × 384 tokens with k = 32 and no clear cluster structure
/// (the slow case), the objective after 30 iterations was within 0.3 % of
/// its value at convergence (which took 70–180 iterations), and the whole
/// run took under a second on one core (`matrixmultiply` is
/// single-threaded here). Clustered data converges (no assignment changes)
/// well before the cap. scikit-learn's cap of 300 would cost seconds for a
/// sub-percent gain on prototypes that are means of hundreds of patches.
pub const DEFAULT_MAX_ITER: usize = 30;

/// Squared distances below this fraction of `‖x‖² + ‖c‖²` are treated as
/// zero: they are rounding noise of the dot-product expansion (f32, 384-d),
/// not real separation. Points this close count as the same point.
const REL_ZERO: f32 = 1e-5;

/// Result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// `(k', dim)` centroids, `k' ≤ k`. Unless `max_iter` was 0, row `j` is
    /// the (unnormalised) mean of the points assigned to cluster `j`, and no
    /// cluster is empty.
    pub centroids: Array2<f32>,
    /// Cluster index of every input point, in input order.
    pub assignment: Vec<u32>,
    /// Number of centroid updates performed.
    pub iterations: usize,
    /// True when Lloyd's iterations stopped because no assignment changed
    /// (false when `max_iter` ran out first).
    pub converged: bool,
}

impl KMeans {
    /// Number of clusters actually produced.
    pub fn k(&self) -> usize {
        self.centroids.nrows()
    }

    /// Number of points in each cluster.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.k()];
        for &a in &self.assignment {
            counts[a as usize] += 1;
        }
        counts
    }
}

/// K-means over the rows of `points` (`n × dim`).
///
/// * Seeding: greedy k-means++ (as scikit-learn, which OVDiff calls): the
///   first centre is a uniform random point; each further centre is the best
///   (lowest resulting potential) of `2 + ⌊ln k⌋` candidates drawn with
///   probability proportional to the squared distance to the nearest chosen
///   centre. Draws come from [`SplitMix64`] seeded with `seed`.
/// * `k` is clamped to `1..=n`; seeding also stops early once every point
///   coincides with a chosen centre, so duplicated points yield at most as
///   many clusters as there are distinct points. `k' = centroids.nrows()`
///   is the number actually produced.
/// * Lloyd iterations: assign every point to its nearest centroid (ties to
///   the lower index); stop if no assignment changed; otherwise recompute
///   centroids as member means (accumulated in `f64`, in point order). At
///   most `max_iter` updates are made ([`DEFAULT_MAX_ITER`] is a sensible
///   value); with `max_iter == 0` the centroids are the k-means++ seeds.
/// * An empty cluster is reseeded with the point farthest from its current
///   centroid among clusters with more than one member (ties to the lowest
///   point index), so every returned cluster has members.
///
/// Distances use `‖x‖² + ‖c‖² − 2 x·c` with the real row norms, so rows need
/// not be unit length (for the L2-normalised patch tokens `‖x‖² = 1`).
/// With `n == 0` the result has no centroids and an empty assignment.
pub fn kmeans(points: ArrayView2<f32>, k: usize, seed: u64, max_iter: usize) -> KMeans {
    let n = points.nrows();
    let dim = points.ncols();
    if n == 0 {
        return KMeans {
            centroids: Array2::zeros((0, dim)),
            assignment: Vec::new(),
            iterations: 0,
            converged: true,
        };
    }
    // Contiguous rows make the centroid sums vectorise; a copy only if needed.
    let points = points.as_standard_layout();
    let points = points.view();
    let k = k.clamp(1, n);
    let sq_norms: Vec<f32> = points.rows().into_iter().map(|r| r.dot(&r)).collect();

    let mut rng = SplitMix64::new(seed);
    let mut centroids = seed_plus_plus(points, &sq_norms, k, &mut rng);
    let k = centroids.nrows();

    let mut assignment = vec![u32::MAX; n];
    let mut dist = vec![0f32; n];
    let mut scores = Array2::<f32>::zeros((n, k));
    let mut iterations = 0;
    let mut converged = false;
    loop {
        let changed = assign(
            points,
            &sq_norms,
            centroids.view(),
            &mut scores,
            &mut assignment,
            &mut dist,
        );
        if changed == 0 {
            converged = true;
            break;
        }
        if iterations == max_iter {
            break;
        }
        update(points, k, &mut assignment, &mut dist, &mut centroids);
        iterations += 1;
    }
    KMeans {
        centroids,
        assignment,
        iterations,
        converged,
    }
}

/// Squared distance from the expansion, clamped at zero and with rounding
/// noise snapped to exactly zero.
#[inline]
fn expanded_sq_dist(xn: f32, cn: f32, dot: f32) -> f32 {
    let d = xn + cn - 2.0 * dot;
    if d <= REL_ZERO * (xn + cn) {
        0.0
    } else {
        d
    }
}

/// Greedy k-means++ seeding; returns up to `k` seed rows copied from `points`.
fn seed_plus_plus(
    points: ArrayView2<f32>,
    sq_norms: &[f32],
    k: usize,
    rng: &mut SplitMix64,
) -> Array2<f32> {
    let n = points.nrows();
    let dim = points.ncols();
    let trials = 2 + (k as f64).ln().floor() as usize;

    let first = rng.below(n);
    let mut chosen = vec![first];
    let first_dots = points.dot(&points.row(first));
    let mut closest: Vec<f32> = (0..n)
        .map(|i| expanded_sq_dist(sq_norms[i], sq_norms[first], first_dots[i]))
        .collect();
    let mut cumulative = vec![0f64; n];
    let mut cand_rows = Array2::<f32>::zeros((trials, dim));
    let mut cand_dots = Array2::<f32>::zeros((n, trials));

    while chosen.len() < k {
        let mut total = 0f64;
        for (c, &d) in cumulative.iter_mut().zip(&closest) {
            total += f64::from(d);
            *c = total;
        }
        if total <= 0.0 {
            break; // every point coincides with a chosen centre
        }
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                let r = rng.next_f64() * total;
                cumulative.partition_point(|&c| c <= r).min(n - 1)
            })
            .collect();
        for (t, &c) in candidates.iter().enumerate() {
            cand_rows.row_mut(t).assign(&points.row(c));
        }
        general_mat_mul(1.0, &points, &cand_rows.t(), 0.0, &mut cand_dots);

        let mut best: Option<(f64, usize)> = None;
        for (t, &c) in candidates.iter().enumerate() {
            let col = cand_dots.column(t);
            let mut potential = 0f64;
            for i in 0..n {
                let d = expanded_sq_dist(sq_norms[i], sq_norms[c], col[i]);
                potential += f64::from(d.min(closest[i]));
            }
            if best.is_none_or(|(p, _)| potential < p) {
                best = Some((potential, t));
            }
        }
        let (_, t) = best.expect("at least two trials");
        let c = candidates[t];
        let col = cand_dots.column(t);
        for i in 0..n {
            let d = expanded_sq_dist(sq_norms[i], sq_norms[c], col[i]);
            if d < closest[i] {
                closest[i] = d;
            }
        }
        chosen.push(c);
    }

    points.select(Axis(0), &chosen)
}

/// Assignment step: nearest centroid per point (ties to the lower index).
/// Fills `dist` with the squared distance to it and returns how many points
/// changed cluster.
fn assign(
    points: ArrayView2<f32>,
    sq_norms: &[f32],
    centroids: ArrayView2<f32>,
    scores: &mut Array2<f32>,
    assignment: &mut [u32],
    dist: &mut [f32],
) -> usize {
    let c_norms: Vec<f32> = centroids.rows().into_iter().map(|r| r.dot(&r)).collect();
    general_mat_mul(1.0, &points, &centroids.t(), 0.0, scores);
    let mut changed = 0;
    for (i, row) in scores.rows().into_iter().enumerate() {
        // argmin_j ‖c_j‖² − 2 x·c_j  (‖x‖² is the same for every j)
        let mut best_j = 0usize;
        let mut best = f32::INFINITY;
        for (j, (&s, &cn)) in row.iter().zip(&c_norms).enumerate() {
            let v = cn - 2.0 * s;
            if v < best {
                best = v;
                best_j = j;
            }
        }
        dist[i] = expanded_sq_dist(sq_norms[i], c_norms[best_j], row[best_j]);
        let j = best_j as u32;
        if assignment[i] != j {
            assignment[i] = j;
            changed += 1;
        }
    }
    changed
}

/// Update step: reseed empty clusters, then set every centroid to the mean
/// of its members.
fn update(
    points: ArrayView2<f32>,
    k: usize,
    assignment: &mut [u32],
    dist: &mut [f32],
    centroids: &mut Array2<f32>,
) {
    let dim = points.ncols();
    let mut counts = vec![0usize; k];
    for &a in assignment.iter() {
        counts[a as usize] += 1;
    }
    for j in 0..k {
        if counts[j] > 0 {
            continue;
        }
        // Farthest point from its centroid whose cluster can spare it.
        let mut pick: Option<usize> = None;
        for i in 0..dist.len() {
            if counts[assignment[i] as usize] > 1 && pick.is_none_or(|p| dist[i] > dist[p]) {
                pick = Some(i);
            }
        }
        // k ≤ n, so an empty cluster implies some cluster has two members.
        let i = pick.expect("an empty cluster implies a cluster with two members");
        counts[assignment[i] as usize] -= 1;
        assignment[i] = j as u32;
        counts[j] = 1;
        dist[i] = 0.0;
    }

    let mut sums = vec![0f64; k * dim];
    match points.as_slice() {
        Some(flat) => {
            for (row, &a) in flat.chunks_exact(dim.max(1)).zip(assignment.iter()) {
                let a = a as usize;
                for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(row) {
                    *s += f64::from(x);
                }
            }
        }
        None => {
            for (row, &a) in points.rows().into_iter().zip(assignment.iter()) {
                let a = a as usize;
                for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(row.iter()) {
                    *s += f64::from(x);
                }
            }
        }
    }
    for (j, mut row) in centroids.rows_mut().into_iter().enumerate() {
        let inv = 1.0 / counts[j] as f64;
        for (c, &s) in row.iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
            *c = (s * inv) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use std::time::Instant;

    /// Roughly Gaussian noise: sum of four uniforms, centred.
    fn noise(rng: &mut SplitMix64) -> f32 {
        ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32
    }

    fn normalize_rows(m: &mut Array2<f32>) {
        for mut row in m.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
    }

    /// `n` unit points around `centres` random unit directions in `dim`-d;
    /// returns the points and each point's true centre.
    fn clustered(
        n: usize,
        dim: usize,
        centres: usize,
        spread: f32,
        seed: u64,
    ) -> (Array2<f32>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let mut c = Array2::from_shape_fn((centres, dim), |_| noise(&mut rng));
        normalize_rows(&mut c);
        let labels: Vec<usize> = (0..n).map(|i| i % centres).collect();
        let mut x = Array2::from_shape_fn((n, dim), |(i, j)| {
            c[[labels[i], j]] + spread * noise(&mut rng)
        });
        normalize_rows(&mut x);
        (x, labels)
    }

    #[test]
    fn recovers_well_separated_clusters() {
        let (x, labels) = clustered(600, 16, 5, 0.02, 3);
        let km = kmeans(x.view(), 5, 11, DEFAULT_MAX_ITER);
        assert_eq!(km.k(), 5);
        assert!(km.converged);
        // Same true label ⇔ same cluster.
        for i in 0..x.nrows() {
            for j in 0..5 {
                assert_eq!(
                    labels[i] == labels[j],
                    km.assignment[i] == km.assignment[j],
                    "points {i} and {j}"
                );
            }
        }
        // Centroids are member means.
        let counts = km.counts();
        assert!(counts.iter().all(|&c| c == 120));
        for j in 0..5 {
            let members: Vec<usize> = (0..x.nrows())
                .filter(|&i| km.assignment[i] == j as u32)
                .collect();
            let mean = x.select(Axis(0), &members).mean_axis(Axis(0)).unwrap();
            for (a, b) in mean.iter().zip(km.centroids.row(j)) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn deterministic_for_same_seed() {
        let (x, _) = clustered(2000, 32, 12, 0.3, 5);
        let a = kmeans(x.view(), 8, 42, DEFAULT_MAX_ITER);
        let b = kmeans(x.view(), 8, 42, DEFAULT_MAX_ITER);
        assert_eq!(a, b);
        let bits = |m: &KMeans| m.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn fewer_points_than_k() {
        let (x, _) = clustered(5, 8, 5, 0.0, 9);
        let km = kmeans(x.view(), 32, 0, DEFAULT_MAX_ITER);
        assert_eq!(km.k(), 5);
        let mut seen = km.assignment.clone();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn duplicates_give_distinct_clusters_only() {
        // 3 distinct points, each repeated 4 times; ask for 10 clusters.
        let (base, _) = clustered(3, 8, 3, 0.0, 4);
        let x = Array2::from_shape_fn((12, 8), |(i, j)| base[[i % 3, j]]);
        let km = kmeans(x.view(), 10, 1, DEFAULT_MAX_ITER);
        assert_eq!(km.k(), 3);
        assert!(km.counts().iter().all(|&c| c == 4));
        for i in 0..12 {
            assert_eq!(km.assignment[i], km.assignment[i % 3]);
        }
    }

    #[test]
    fn empty_and_degenerate_inputs() {
        let x = Array2::<f32>::zeros((0, 4));
        let km = kmeans(x.view(), 3, 0, 10);
        assert_eq!(km.k(), 0);
        assert!(km.assignment.is_empty());

        let x = Array2::<f32>::ones((7, 4));
        let km = kmeans(x.view(), 3, 0, 10);
        assert_eq!(km.k(), 1);
        assert!(km.assignment.iter().all(|&a| a == 0));

        let (x, _) = clustered(50, 4, 3, 0.1, 2);
        let km = kmeans(x.view(), 0, 0, 10);
        assert_eq!(km.k(), 1);

        // max_iter = 0: seeds only, but a valid assignment.
        let km = kmeans(x.view(), 3, 0, 0);
        assert_eq!(km.k(), 3);
        assert_eq!(km.iterations, 0);
        assert_eq!(km.assignment.len(), 50);
    }

    #[test]
    fn non_contiguous_view_matches_contiguous() {
        let (x, _) = clustered(300, 10, 4, 0.2, 8);
        let xt = x.t().to_owned();
        let view = xt.t(); // same values, column-major layout
        let a = kmeans(x.view(), 4, 3, DEFAULT_MAX_ITER);
        let b = kmeans(view, 4, 3, DEFAULT_MAX_ITER);
        assert_eq!(a.assignment, b.assignment);
    }

    /// Typical OVDiff part clustering: 32 000 tokens × 384 dims, k = 32.
    /// Run with `cargo test --release --lib kmeans_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kmeans_timing() {
        for (spread, label) in [(0.15f32, "clustered"), (2.0, "diffuse")] {
            let (x, _) = clustered(32_000, 384, 64, spread, 1);
            let t = Instant::now();
            let km = kmeans(x.view(), 32, 0, DEFAULT_MAX_ITER);
            let elapsed = t.elapsed();
            println!(
                "{label}: n=32000 d=384 k=32: {:.3} s, {} iterations, converged={}",
                elapsed.as_secs_f64(),
                km.iterations,
                km.converged
            );
            let t = Instant::now();
            let km0 = kmeans(x.view(), 32, 0, 0);
            println!(
                "  seeding + 1 assignment: {:.3} s",
                t.elapsed().as_secs_f64()
            );
            assert_eq!(km0.k(), 32);
            assert!(elapsed.as_secs_f64() < 2.0);
        }
    }
}
