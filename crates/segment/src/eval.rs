//! Evaluation: confusion matrices, IoU and pixel accuracy accumulated over a dataset, as mmseg's `IoUMetric` defines them.
//!
//! Pixels whose ground truth is [`IGNORE`] (255) are skipped. Counts are
//! summed over the whole dataset before any ratio is taken (IoU is *not*
//! averaged per image). A class that appears neither in the ground truth
//! nor in the predictions has an undefined IoU (`None`) and is left out of
//! the mean, like `np.nanmean`.

/// The ground-truth label that is not scored.
pub const IGNORE: u8 = 255;

/// A `n × n` confusion matrix: `rows` = ground truth, `columns` = prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    n: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix over `n` labels (background included).
    pub fn new(n: usize) -> Confusion {
        Confusion {
            n,
            counts: vec![0; n * n],
        }
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Count of pixels with ground truth `gt` predicted as `pred`.
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.n + pred]
    }

    /// Add one image. Ground-truth pixels equal to [`IGNORE`] are skipped;
    /// any other label `>= n` (on either side) is an error.
    pub fn add(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), String> {
        if gt.len() != pred.len() {
            return Err(format!(
                "ground truth has {} pixels but the prediction {}",
                gt.len(),
                pred.len()
            ));
        }
        for (&g, &p) in gt.iter().zip(pred) {
            if g == IGNORE {
                continue;
            }
            let (g, p) = (g as usize, p as usize);
            if g >= self.n || p >= self.n {
                return Err(format!(
                    "label {} is outside the {} classes evaluated",
                    g.max(p),
                    self.n
                ));
            }
            self.counts[g * self.n + p] += 1;
        }
        Ok(())
    }

    /// Add another matrix of the same size.
    pub fn merge(&mut self, other: &Confusion) {
        assert_eq!(self.n, other.n, "confusion matrices of different sizes");
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Per-class IoU: TP / (TP + FP + FN), `None` when the class is absent
    /// from both ground truth and predictions.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.n)
            .map(|k| {
                let tp = self.get(k, k);
                let gt: u64 = (0..self.n).map(|p| self.get(k, p)).sum();
                let pred: u64 = (0..self.n).map(|g| self.get(g, k)).sum();
                let union = gt + pred - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean of the defined IoUs (`None` if none is defined).
    pub fn miou(&self) -> Option<f64> {
        let v: Vec<f64> = self.iou().into_iter().flatten().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Correct pixels over all scored pixels.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..self.n).map(|k| self.get(k, k)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// The matrix as CSV, with a header row and column of class names.
    pub fn to_csv(&self, names: &[String]) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("gt\\pred");
        for n in names {
            out.push(',');
            out.push_str(&quote(n));
        }
        out.push('\n');
        for g in 0..self.n {
            out.push_str(&quote(names.get(g).map(String::as_str).unwrap_or("?")));
            for p in 0..self.n {
                out.push_str(&format!(",{}", self.get(g, p)));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_ious() {
        // 3 labels. gt / pred over 10 pixels, two of them ignored.
        let gt = [0, 0, 0, 1, 1, 1, 1, 255, 255, 0];
        let pred = [0, 0, 1, 1, 1, 1, 0, 2, 1, 0];
        let mut c = Confusion::new(3);
        c.add(&gt, &pred).unwrap();
        // class 0: tp 3 (pixels 0,1,9), fp 1 (pixel 6), fn 1 (pixel 2) → 3/5
        // class 1: tp 3, fp 1 (pixel 2), fn 1 (pixel 6) → 3/5
        // class 2: absent from gt and (scored) pred → undefined
        let iou = c.iou();
        assert_eq!(iou[0], Some(0.6));
        assert_eq!(iou[1], Some(0.6));
        assert_eq!(iou[2], None);
        assert_eq!(c.miou(), Some(0.6));
        assert_eq!(c.pixel_accuracy(), Some(6.0 / 8.0));
    }

    #[test]
    fn counts_accumulate_over_images_before_dividing() {
        // image 1: class 1 perfect on 1 pixel; image 2: class 1 wrong on 9.
        let mut c = Confusion::new(2);
        c.add(&[1], &[1]).unwrap();
        c.add(&[1; 9], &[0; 9]).unwrap();
        // dataset IoU of class 1 = 1 / 10, not mean(1.0, 0.0) = 0.5
        assert_eq!(c.iou()[1], Some(0.1));
        assert_eq!(c.iou()[0], Some(0.0));
        assert_eq!(c.miou(), Some(0.05));
    }

    #[test]
    fn a_class_predicted_but_absent_from_gt_scores_zero() {
        let mut c = Confusion::new(3);
        c.add(&[0, 0], &[0, 2]).unwrap();
        assert_eq!(c.iou(), vec![Some(0.5), None, Some(0.0)]);
    }

    #[test]
    fn out_of_range_labels_and_sizes_are_errors() {
        let mut c = Confusion::new(2);
        assert!(c.add(&[0], &[0, 1]).is_err());
        assert!(c.add(&[3], &[0]).is_err());
        assert!(
            c.add(&[255], &[7]).is_ok(),
            "ignored pixels are not checked"
        );
        assert_eq!(c.pixel_accuracy(), None);
    }

    #[test]
    fn csv_has_names_and_counts() {
        let mut c = Confusion::new(2);
        c.add(&[0, 1, 1], &[0, 1, 0]).unwrap();
        let csv = c.to_csv(&["background".into(), "cat".into()]);
        assert_eq!(
            csv,
            "gt\\pred,\"background\",\"cat\"\n\"background\",1,0\n\"cat\",1,1\n"
        );
    }
}
