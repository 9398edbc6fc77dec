//! `bench prefilter CLIP_DIR`: the CLIP pre-filter against its top-k.

use ovdiff_core::Home;
use ovdiff_models::runtime::{Runtime, RuntimeOptions};

use crate::sample::sample_images;

/// The CLIP pre-filter's cost per image against its top-k, with 20
/// candidate class names, on two sample images: the first with an empty
/// text cache, the second reusing it.
pub(crate) fn bench_prefilter(home: &Home, dir: &std::path::Path) {
    use ovdiff_segment::prefilter::{Prefilter, TEXT_BATCH};
    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let mut pf = Prefilter::open(&runtime, dir).expect("CLIP bundle");
    let images = sample_images(home);
    let names: Vec<String> = [
        "person",
        "cat",
        "dog",
        "car",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "chair",
        "cow",
        "dining table",
        "horse",
        "motorbike",
        "potted plant",
        "sheep",
        "sofa",
        "train",
        "tv monitor",
        "aeroplane",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!(
        "\n## CLIP pre-filter ({}), 20 candidate classes\n",
        dir.display()
    );
    println!("| top-k | batch | prompts | image 1 (cold cache) | runs | image 2 | runs, prompts embedded |");
    println!("|---|---|---|---|---|---|---|");
    let row = |pf: &mut Prefilter, k: usize, batch: usize| {
        pf.set_text_batch(batch);
        pf.clear_cache();
        let (sel, a) = pf.select(&images[0], &names, k).unwrap();
        let (_, b) = pf.select(&images[1], &names, k).unwrap();
        println!(
            "| {k} | {batch} | {} | {:.0} ms | {} | {:.0} ms | {}, {} |",
            sel.prompts, a.ms, a.runs, b.ms, b.runs, b.prompts_embedded
        );
    };
    // a warm-up run, not reported
    let _ = pf.select(&images[2], &names, 1).unwrap();
    for k in [1, 3, 5, 6, 8] {
        row(&mut pf, k, TEXT_BATCH);
    }
    for batch in [64, 128, 256, 512] {
        row(&mut pf, 10, batch);
    }
}
