//! The CLIP category pre-filter: before segmenting, CLIP guesses which candidate classes are in the image, and only those are matched.
//!
//! OVDiff's reference (`utils/clip_class.py`, `CLIPClassifier`) runs in two
//! stages, reproduced here:
//!
//! 1. **Top-k.** The image is resized to the model's square input (224×224
//!    for ViT-B/16; the whole image, squashed, as the reference's
//!    `T.Resize((224, 224))` does, not a centre crop), normalised with the
//!    CLIP mean and std, and embedded; each candidate class `c` is embedded
//!    as the text `"a {c}"`. Both are L2-normalised, and the `k` classes
//!    with the highest cosine are kept ([`top_k`]; `k` is clamped to the
//!    number of candidates; [`DEFAULT_TOPK`] unless given).
//! 2. **Powerset.** Every non-empty subset of those `k` classes becomes one
//!    prompt, its classes' `"a {c}"` joined with `" and "` in stage-1 rank
//!    order (`"a cat and a dog"`), in the reference's order ([`powerset`]:
//!    by size, then lexicographically). The subset whose prompt has the
//!    highest cosine with the image (the first one on a tie) is the
//!    selection.
//!
//! The image is then segmented with only the selected classes as
//! candidates (the background prototypes of the selected classes stand for
//! background, as always). Without a CLIP bundle there is no pre-filter.
//!
//! Stage 2 embeds `2^k − 1` prompts (1023 for the reference's `k = 10`,
//! which is why the default is smaller: [`DEFAULT_TOPK`]).
//! Text embeddings depend only on the prompt, so they are cached per run
//! ([`TEXT_CACHE_MAX`] prompts), and the prompts that miss the cache are
//! embedded in batches of [`TEXT_BATCH`].
//!
//! The CLIP model itself (the bundle check, preprocessing, the text and
//! image towers) is [`ovdiff_models::clip`]. With its joint graph the image
//! and the first batch of class prompts share one run, and later batches of
//! prompts are run with the same image again, which with batches of
//! [`TEXT_BATCH`] adds about 15% to stage 2.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::{Error, Result};
use ovdiff_models::clip::{ClipBundle, ClipModel, Layout};
use ovdiff_models::runtime::Runtime;

/// The default `k`: classes kept by stage 1, whose subsets stage 2
/// compares. The reference uses [`REFERENCE_TOPK`]; its 1023 prompts per
/// image cost 8–35 s on two CPU cores against about 2 s for `k = 6`
/// (63 prompts), measured with a ViT-B/16-sized export (docs/prefilter.md).
pub const DEFAULT_TOPK: usize = 6;

/// OVDiff's `k` (`CLIPClassifier(topk=10)`): `--prefilter-topk 10`.
pub const REFERENCE_TOPK: usize = 10;

/// The largest `k` accepted (`2^16 − 1` prompts per image is already far
/// beyond reasonable).
pub const MAX_TOPK: usize = 16;

/// Prompts per text-tower run (see docs/prefilter.md for the measurement).
pub const TEXT_BATCH: usize = 256;

/// Text embeddings cached per run before the cache is emptied (32 MiB at
/// ViT-B/16's 512 dimensions).
pub const TEXT_CACHE_MAX: usize = 16_384;

/// What joins the class prompts of a subset.
pub const CONNECTOR: &str = " and ";
/// A class's stage-1 prompt.
pub fn class_prompt(name: &str) -> String {
    format!("a {name}")
}

/// A subset's stage-2 prompt: its class prompts joined with [`CONNECTOR`].
pub fn subset_prompt<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| class_prompt(n.as_ref()))
        .collect::<Vec<_>>()
        .join(CONNECTOR)
}

/// Indices of the `k` highest scores, best first; equal scores keep index
/// order. `k` is clamped to `scores.len()`.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Every non-empty subset of `0..n`, as sorted position lists, in the
/// reference's order: by size, then lexicographically (Python's
/// `combinations(range(n), r)` for r = 1..n). `2^n − 1` subsets.
pub fn powerset(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity((1usize << n).saturating_sub(1));
    for r in 1..=n {
        let mut c: Vec<usize> = (0..r).collect();
        loop {
            out.push(c.clone());
            // the rightmost position that can still move right
            let Some(i) = (0..r).rev().find(|&i| c[i] < n - r + i) else {
                break;
            };
            c[i] += 1;
            for j in i + 1..r {
                c[j] = c[j - 1] + 1;
            }
        }
    }
    out
}

/// `v` scaled to unit length (a zero vector stays zero: every cosine with
/// it is 0).
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One class kept by stage 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// Its index among the candidates.
    pub index: usize,
    /// The class name.
    pub class: String,
    /// Cosine of `"a {class}"` with the image.
    pub score: f32,
}

/// What the pre-filter chose for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The selected candidates (indices), in stage-1 rank order.
    pub kept: Vec<usize>,
    /// Their names, in the same order.
    pub classes: Vec<String>,
    /// Stage 1: the top-k classes, best first, with their cosines.
    pub stage1: Vec<Ranked>,
    /// Stage 2's winning prompt.
    pub prompt: String,
    /// Its cosine with the image.
    pub score: f32,
    /// Prompts compared in stage 2 (`2^k − 1`).
    pub prompts: usize,
}

/// Embeds stage-2 prompts: L2-normalised embeddings, in order.
pub type EmbedPrompts<'a> = dyn FnMut(&[String]) -> Result<Vec<Vec<f32>>> + 'a;

/// Both stages on embeddings, without a model: `image` and `classes` are
/// L2-normalised embeddings (`classes[i]` of `"a {names[i]}"`); `embed`
/// returns the L2-normalised embeddings of stage-2 prompts, in order.
pub fn select_with(
    image: &[f32],
    classes: &[Vec<f32>],
    names: &[String],
    k: usize,
    embed: &mut EmbedPrompts<'_>,
) -> Result<Selection> {
    if names.is_empty() || classes.len() != names.len() {
        return Err(Error::Invalid(format!(
            "the pre-filter needs one embedding per candidate class ({} names, {} embeddings)",
            names.len(),
            classes.len()
        )));
    }
    if k == 0 {
        return Err(Error::Invalid("--prefilter-topk must be at least 1".into()));
    }
    let k = k.min(names.len()).min(MAX_TOPK);
    let scores: Vec<f32> = classes.iter().map(|c| dot(image, c)).collect();
    let top = top_k(&scores, k);
    let subsets = powerset(top.len());
    let prompts: Vec<String> = subsets
        .iter()
        .map(|s| subset_prompt(&s.iter().map(|&p| &names[top[p]]).collect::<Vec<_>>()))
        .collect();
    let embs = embed(&prompts)?;
    if embs.len() != prompts.len() {
        return Err(Error::Invalid(format!(
            "{} prompt embeddings for {} prompts",
            embs.len(),
            prompts.len()
        )));
    }
    let mut best = 0;
    let mut best_score = f32::NEG_INFINITY;
    for (i, e) in embs.iter().enumerate() {
        let s = dot(image, e);
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    let kept: Vec<usize> = subsets[best].iter().map(|&p| top[p]).collect();
    Ok(Selection {
        classes: kept.iter().map(|&i| names[i].clone()).collect(),
        kept,
        stage1: top
            .iter()
            .map(|&i| Ranked {
                index: i,
                class: names[i].clone(),
                score: scores[i],
            })
            .collect(),
        prompt: prompts[best].clone(),
        score: best_score,
        prompts: prompts.len(),
    })
}

/// Time and work of one [`Prefilter::select`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefilterStats {
    /// Graph runs.
    pub runs: usize,
    /// Prompts embedded by the text tower (the others came from the cache).
    pub prompts_embedded: usize,
    /// Prompts answered from the cache.
    pub prompts_cached: usize,
    /// Wall time, in milliseconds.
    pub ms: f64,
}

/// A loaded CLIP model, ready to select classes, with its cache of text
/// embeddings.
pub struct Prefilter {
    model: ClipModel,
    cache: HashMap<String, Vec<f32>>,
    stats: PrefilterStats,
    text_batch: usize,
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefilter")
            .field("bundle", self.model.bundle())
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Prefilter {
    /// Load the graphs of a checked bundle and check their inputs and
    /// outputs (names, types, the image size) before anything runs
    /// ([`ClipModel::load`]).
    pub fn load(runtime: &Runtime, bundle: ClipBundle) -> Result<Prefilter> {
        Ok(Prefilter {
            model: ClipModel::load(runtime, bundle)?,
            cache: HashMap::new(),
            stats: PrefilterStats::default(),
            text_batch: TEXT_BATCH,
        })
    }

    /// [`ClipBundle::open`] then [`load`](Self::load).
    pub fn open(runtime: &Runtime, dir: &Path) -> Result<Prefilter> {
        Self::load(runtime, ClipBundle::open(dir)?)
    }

    /// The bundle.
    pub fn bundle(&self) -> &ClipBundle {
        self.model.bundle()
    }

    /// Whether the graph ties the text and image batch sizes
    /// ([`ClipModel::ties_batches`]): then every prompt costs an image pass
    /// too, and a re-export with a current optimum is much faster.
    pub fn ties_batches(&self) -> bool {
        self.model.ties_batches()
    }

    /// Prompts per text-tower run ([`TEXT_BATCH`] unless changed; for
    /// benchmarks).
    pub fn set_text_batch(&mut self, n: usize) {
        self.text_batch = n.max(1);
    }

    /// Forget every cached text embedding.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Select the classes of `names` that CLIP sees in `img` (see the module
    /// docs); `k` is the stage-1 top-k. Also returns what it cost.
    pub fn select(
        &mut self,
        img: &RgbImage,
        names: &[String],
        k: usize,
    ) -> Result<(Selection, PrefilterStats)> {
        let start = Instant::now();
        self.stats = PrefilterStats::default();
        if self.cache.len() > TEXT_CACHE_MAX {
            self.cache.clear();
        }
        let pixels = self.model.bundle().pixels(img);
        let class_prompts: Vec<String> = names.iter().map(|n| class_prompt(n)).collect();
        let image = self.image_embedding(&pixels, &class_prompts)?;
        let classes = self.embed_texts(&class_prompts, &pixels)?;
        let sel = select_with(&image, &classes, names, k, &mut |p| {
            self.embed_texts(p, &pixels)
        })?;
        self.stats.ms = elapsed_ms(start.elapsed());
        Ok((sel, self.stats.clone()))
    }

    /// The image's L2-normalised embedding. With the joint graph, the first
    /// batch of `warm` prompts that are not cached rides along (cached for
    /// [`embed_texts`](Self::embed_texts)).
    fn image_embedding(&mut self, pixels: &[f32], warm: &[String]) -> Result<Vec<f32>> {
        let mut misses: Vec<String> = Vec::new();
        if matches!(self.model.bundle().layout(), Layout::Joint(_)) {
            for p in warm {
                if !self.cache.contains_key(p)
                    && !misses.contains(p)
                    && misses.len() < self.text_batch
                {
                    misses.push(p.clone());
                }
            }
        }
        let tokenizer = self.model.bundle().tokenizer();
        let rows: Vec<Vec<i64>> = misses.iter().map(|p| tokenizer.encode(p)).collect();
        self.stats.runs += 1;
        let (image, texts) = self.model.embed_image(pixels, &rows)?;
        self.stats.prompts_embedded += texts.len();
        for (p, e) in misses.into_iter().zip(texts) {
            self.cache.insert(p, normalised(e));
        }
        Ok(normalised(image))
    }

    /// L2-normalised embeddings of `prompts`, in order: cached ones from the
    /// cache, the others through the text tower, sorted by length, in
    /// batches of [`TEXT_BATCH`] (the joint graph also gets `pixels`).
    fn embed_texts(&mut self, prompts: &[String], pixels: &[f32]) -> Result<Vec<Vec<f32>>> {
        let tokenizer = self.model.bundle().tokenizer();
        let end = tokenizer.end_id();
        let mut misses: Vec<(&String, Vec<i64>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in prompts {
            if !self.cache.contains_key(p) && seen.insert(p) {
                misses.push((p, tokenizer.encode(p)));
            }
        }
        self.stats.prompts_cached += prompts.len() - misses.len();
        // Batches of prompts of similar length pad little.
        misses.sort_by_key(|(_, ids)| ids.iter().skip(1).position(|&t| t == end));
        for chunk in misses.chunks(self.text_batch) {
            let ids: Vec<Vec<i64>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            let texts = self.model.embed_texts(&ids, pixels)?;
            self.stats.runs += 1;
            self.stats.prompts_embedded += chunk.len();
            for ((p, _), e) in chunk.iter().zip(texts) {
                self.cache.insert((*p).clone(), normalised(e));
            }
        }
        Ok(prompts.iter().map(|p| self.cache[p].clone()).collect())
    }
}

fn elapsed_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powerset_follows_the_reference_order() {
        assert_eq!(
            powerset(3),
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2]
            ]
        );
        for n in 0..=10 {
            let p = powerset(n);
            assert_eq!(p.len(), (1 << n) - 1, "n = {n}");
            let mut masks: Vec<u32> = p
                .iter()
                .map(|s| s.iter().map(|&i| 1u32 << i).sum())
                .collect();
            masks.sort_unstable();
            masks.dedup();
            assert_eq!(masks.len(), (1 << n) - 1, "all distinct, n = {n}");
            assert!(p.windows(2).all(|w| w[0].len() <= w[1].len()), "by size");
        }
    }

    #[test]
    fn top_k_is_best_first_and_stable_on_ties() {
        assert_eq!(top_k(&[0.1, 0.5, 0.3, 0.5], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.1, 0.2], 10), vec![1, 0], "k clamped");
        assert!(top_k(&[], 3).is_empty());
    }

    #[test]
    fn prompts_join_class_prompts_with_and() {
        assert_eq!(class_prompt("cat"), "a cat");
        assert_eq!(
            subset_prompt(&["cat", "potted plant"]),
            "a cat and a potted plant"
        );
    }

    /// Embeddings in a "colour" space: a prompt's embedding is the sum of
    /// its colour words' axes.
    fn colour_embed(p: &str) -> Vec<f32> {
        let mut v = vec![0f32; 3];
        for (i, w) in ["red", "green", "blue"].iter().enumerate() {
            if p.split_whitespace().any(|t| t == *w) {
                v[i] += 1.0;
            }
        }
        normalised(v)
    }

    fn run(image: [f32; 3], names: &[&str], k: usize) -> (Selection, Vec<String>) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let classes: Vec<Vec<f32>> = names
            .iter()
            .map(|n| colour_embed(&class_prompt(n)))
            .collect();
        let mut asked = Vec::new();
        let sel = select_with(&normalised(image.to_vec()), &classes, &names, k, &mut |p| {
            asked.extend(p.iter().cloned());
            Ok(p.iter().map(|s| colour_embed(s)).collect())
        })
        .unwrap();
        (sel, asked)
    }

    #[test]
    fn stage_two_finds_the_best_subset() {
        // half red, half green: no single class explains it, the pair does
        let (sel, asked) = run([1.0, 1.0, 0.0], &["red", "green", "blue"], 10);
        assert_eq!(sel.classes, vec!["red", "green"]);
        assert_eq!(sel.kept, vec![0, 1]);
        assert_eq!(sel.prompt, "a red and a green");
        assert!((sel.score - 1.0).abs() < 1e-6);
        assert_eq!(sel.prompts, 7, "k clamped to 3 classes: 2^3 - 1 prompts");
        assert_eq!(asked.len(), 7);
        assert_eq!(sel.stage1.len(), 3);
        assert_eq!(sel.stage1[2].class, "blue");
        assert!(sel.stage1[2].score.abs() < 1e-6);

        // mostly red: the single class wins over every pair
        let (sel, _) = run([0.9, 0.1, 0.0], &["red", "green", "blue"], 10);
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.prompt, "a red");
    }

    #[test]
    fn stage_one_limits_stage_two() {
        // k = 1: only the best class is ever considered
        let (sel, asked) = run([1.0, 0.9, 0.0], &["blue", "green", "red"], 1);
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.kept, vec![2]);
        assert_eq!(asked, vec!["a red"]);
        // k = 2: the subsets of {red, green}, in rank order
        let (sel, asked) = run([1.0, 0.9, 0.0], &["blue", "green", "red"], 2);
        assert_eq!(asked, vec!["a red", "a green", "a red and a green"]);
        assert_eq!(sel.classes, vec!["red", "green"]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let names = vec!["red".to_string()];
        let mut embed = |p: &[String]| Ok(p.iter().map(|s| colour_embed(s)).collect());
        let err = select_with(
            &[1.0, 0.0, 0.0],
            &[vec![1.0, 0.0, 0.0]],
            &names,
            0,
            &mut embed,
        )
        .unwrap_err()
        .report();
        assert!(err.contains("at least 1"), "{err}");
        let err = select_with(&[1.0, 0.0, 0.0], &[], &names, 3, &mut embed)
            .unwrap_err()
            .report();
        assert!(err.contains("one embedding per candidate"), "{err}");
    }

    #[test]
    fn a_zero_embedding_stays_zero() {
        assert_eq!(normalised(vec![0.0, 0.0]), vec![0.0, 0.0]);
        let v = normalised(vec![3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    // ---- the model, with the tiny fixture (tests/fixtures/clip-tiny) ----

    use std::path::PathBuf;

    fn fixture() -> PathBuf {
        ovdiff_models::testing::fixture("clip-tiny")
    }

    /// The runtime, or `None` (with a message) when ONNX Runtime is not
    /// installed; under CI=true that fails the test.
    fn runtime() -> Option<Runtime> {
        ovdiff_models::testing::runtime_or_skip()
    }

    /// A copy of the fixture's export files (not `variants/`) in a temp dir.
    fn copy_fixture() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(fixture()).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
            }
        }
        tmp
    }

    fn solid(w: u32, h: u32, left: [u8; 3], right: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| {
            image::Rgb(if x < w / 2 { left } else { right })
        })
    }

    const RED: [u8; 3] = [230, 40, 40];
    const GREEN: [u8; 3] = [40, 230, 40];

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn check_fixture_answers(pf: &mut Prefilter) {
        let vocab = names(&["blue", "green", "red"]);
        let (sel, stats) = pf.select(&solid(64, 48, RED, RED), &vocab, 10).unwrap();
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.kept, vec![2]);
        assert_eq!(sel.stage1[0].class, "red");
        assert!((sel.stage1[0].score - 1.0).abs() < 1e-4, "{sel:?}");
        assert!((sel.score - 1.0).abs() < 1e-4, "{sel:?}");
        assert_eq!(sel.prompts, 7);
        assert_eq!(
            stats.prompts_embedded,
            3 + 7 - 3,
            "class prompts once, then pairs/triple"
        );

        // Half red, half green: stage 1 ranks red and green on top (cosine
        // 1/2 each), stage 2 finds "a red and a green" (cosine 1).
        let (sel, stats) = pf.select(&solid(64, 48, RED, GREEN), &vocab, 10).unwrap();
        let mut kept = sel.classes.clone();
        kept.sort();
        assert_eq!(kept, vec!["green", "red"], "{sel:?}");
        assert!((sel.score - 1.0).abs() < 1e-3, "{sel:?}");
        assert!((sel.stage1[0].score - 0.5).abs() < 1e-2, "{sel:?}");
        assert_eq!(sel.stage1[2].class, "blue");
        // every text embedding came from the cache; one run for the image
        assert_eq!(stats.prompts_embedded, 0, "{stats:?}");
        assert_eq!(stats.runs, 1, "{stats:?}");

        // k = 1 cannot find the pair
        let (sel, _) = pf.select(&solid(64, 48, RED, GREEN), &vocab, 1).unwrap();
        assert_eq!(sel.classes.len(), 1);
        assert_eq!(sel.prompts, 1);
    }

    #[test]
    fn the_fixture_selects_the_known_classes() {
        let Some(rt) = runtime() else { return };
        let mut pf = Prefilter::open(&rt, &fixture()).unwrap();
        check_fixture_answers(&mut pf);
    }

    #[test]
    fn a_graph_with_one_batch_dimension_gets_one_image_per_prompt() {
        let Some(rt) = runtime() else { return };
        let tmp = copy_fixture();
        std::fs::copy(
            fixture().join("variants/tied_batch.onnx"),
            tmp.path().join("model.onnx"),
        )
        .unwrap();
        let mut pf = Prefilter::open(&rt, tmp.path()).unwrap();
        assert!(pf.ties_batches());
        check_fixture_answers(&mut pf);
        let pf = Prefilter::open(&rt, &fixture()).unwrap();
        assert!(!pf.ties_batches());
    }

    #[test]
    fn the_split_layout_gives_the_same_answers() {
        let Some(rt) = runtime() else { return };
        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("model.onnx")).unwrap();
        std::fs::create_dir(tmp.path().join("onnx")).unwrap();
        for f in ["text_model.onnx", "vision_model.onnx"] {
            std::fs::copy(
                fixture().join("variants").join(f),
                tmp.path().join("onnx").join(f),
            )
            .unwrap();
        }
        let mut pf = Prefilter::open(&rt, tmp.path()).unwrap();
        assert!(matches!(pf.bundle().layout(), Layout::Split { .. }));
        check_fixture_answers(&mut pf);
    }
}
