//! Issue #21, "a first day without surprises": label maps that read on their own, masks in standard formats, JSON lines, batches that survive a missing file.

use std::path::Path;

use ovdiff_segment::render::read_label_png;
use ovdiff_segment::rle::CocoRle;

use crate::harness::text;
use crate::segment::Kit;

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// `segment IMG --classes CLASSES --label-ids bank` into a fresh folder;
/// returns the run's labels.json.
fn bank_ids(kit: &Kit, img: &str, classes: &str, out: &str) -> serde_json::Value {
    let res = kit.run(&[
        "segment",
        img,
        "--classes",
        classes,
        "--label-ids",
        "bank",
        "--out",
        out,
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    json_file(&Path::new(out).join("labels.json"))
}

#[test]
fn r21_the_label_map_is_complete_and_stable_with_bank_ids() {
    let Some(kit) = Kit::new() else { return };
    let img = kit.query_image("q.png", [230, 40, 40]);
    let out = kit.out();
    // query order: values follow --classes, every class listed, found or not
    let res = kit.run(&["segment", &img, "--classes", "blue,red", "--out", &out]);
    assert!(res.status.success(), "{:?}", text(&res));
    let dir = Path::new(&out);
    let report = json_file(&dir.join("q.json"));
    assert_eq!(report["label_ids"], "query");
    assert_eq!(
        report["label_map"],
        serde_json::json!({"0": "background", "1": "blue", "2": "red"})
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("labels.txt")).unwrap(),
        "background\nblue\nred\n"
    );
    let labels = json_file(&dir.join("labels.json"));
    assert_eq!(labels["labels"], report["label_map"]);

    // bank ids: red was added first, blue second, in every order of --classes
    let a = bank_ids(&kit, &img, "blue,red", &format!("{out}-a"));
    let b = bank_ids(&kit, &img, "red,blue", &format!("{out}-b"));
    assert_eq!(a["label_ids"], "bank");
    assert_eq!(a["labels"], b["labels"]);
    assert_eq!(
        a["labels"],
        serde_json::json!({"0": "background", "1": "red", "2": "blue"})
    );
    let report = json_file(&Path::new(&format!("{out}-b")).join("q.json"));
    let red = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "red")
        .expect("red is found");
    assert_eq!(red["label"], 1);
    let (_, _, px) = read_label_png(&Path::new(&format!("{out}-b")).join("q.png")).unwrap();
    assert!(px.contains(&1) && !px.iter().any(|&l| l > 2));

    // kept across add, rename and remove
    kit.add("green", [40, 230, 40], &[]);
    let res = kit.run(&["rename", "blue", "navy"]);
    assert!(res.status.success(), "{:?}", text(&res));
    let res = kit.run(&["remove", "red"]);
    assert!(res.status.success(), "{:?}", text(&res));
    let c = bank_ids(&kit, &img, "green,navy", &format!("{out}-c"));
    assert_eq!(
        c["labels"],
        serde_json::json!({"0": "background", "2": "navy", "3": "green"})
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&format!("{out}-c")).join("labels.txt")).unwrap(),
        "background\n\nnavy\ngreen\n"
    );
    // a removed name gets its id back
    kit.add("red", [230, 40, 40], &[]);
    let d = bank_ids(&kit, &img, "navy,red,green", &format!("{out}-d"));
    assert_eq!(
        d["labels"],
        serde_json::json!({"0": "background", "1": "red", "2": "navy", "3": "green"})
    );
}

/// `segment IMG --bank BANK --all-classes --label-ids bank`; the run's labels.json.
fn file_ids(kit: &Kit, img: &str, bank: &Path, out: &str) -> serde_json::Value {
    let res = kit.sb.run(&[
        "segment",
        img,
        "--bank",
        bank.to_str().unwrap(),
        "--all-classes",
        "--label-ids",
        "bank",
        "--out",
        out,
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    json_file(&Path::new(out).join("labels.json"))["labels"].clone()
}

#[test]
fn r21_bank_label_ids_travel_in_ovbank_files() {
    let Some(kit) = Kit::new() else { return };
    let img = kit.query_image("q.png", [230, 40, 40]);
    let out = kit.out();
    let data = kit.data.path();
    // red 1, blue 2, green 3; red removed: blue 2, green 3
    kit.add("green", [40, 230, 40], &[]);
    assert!(kit.run(&["remove", "red"]).status.success());
    let file = data.join("team.ovbank");
    let res = kit.run(&["export", "-o", file.to_str().unwrap()]);
    assert!(res.status.success(), "{:?}", text(&res));
    let want = serde_json::json!({"0": "background", "2": "blue", "3": "green"});
    // queried in place
    assert_eq!(file_ids(&kit, &img, &file, &format!("{out}-file")), want);
    // imported into a new bank: the same values
    let other = data.join("other");
    let res = kit.sb.run(&[
        "import",
        file.to_str().unwrap(),
        "--into",
        other.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    assert_eq!(file_ids(&kit, &img, &other, &format!("{out}-import")), want);
    // and exported again: the same bytes
    let again = data.join("again.ovbank");
    let res = kit.sb.run(&[
        "export",
        "-o",
        again.to_str().unwrap(),
        "--bank",
        other.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap()
    );

    // merged with a file whose ids collide: the first input keeps its ids,
    // a class whose id is taken is numbered after the highest
    let third = data.join("third");
    for (class, color) in [("cyan", [40, 230, 230]), ("magenta", [230, 40, 230])] {
        let dir = crate::bank::support_dir(data, class, color, 2);
        let res = crate::bank::add_tiny(&kit.sb, &third, class, &dir, &["--create"]);
        assert!(res.status.success(), "{:?}", text(&res));
    }
    let third_file = data.join("third.ovbank");
    let res = kit.sb.run(&[
        "export",
        "-o",
        third_file.to_str().unwrap(),
        "--bank",
        third.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    let merged = data.join("merged.ovbank");
    let res = kit.sb.run(&[
        "merge",
        file.to_str().unwrap(),
        third_file.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    assert_eq!(
        file_ids(&kit, &img, &merged, &format!("{out}-merged")),
        serde_json::json!({"0": "background", "1": "cyan", "2": "blue", "3": "green", "4": "magenta"})
    );
}

#[test]
fn r21_masks_and_rle_round_trip() {
    let Some(kit) = Kit::new() else { return };
    let img = kit.query_image("q.png", [230, 40, 40]);
    let out = kit.out();
    let res = kit.run(&[
        "segment",
        &img,
        "--classes",
        "red,blue",
        "--out",
        &out,
        "--masks",
        "png,rle",
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
    let dir = Path::new(&out);
    let (w, h, labels) = read_label_png(&dir.join("q.png")).unwrap();
    let report = json_file(&dir.join("q.json"));
    let classes = report["classes"].as_array().unwrap();
    assert!(!classes.is_empty());
    for c in classes {
        let label = c["label"].as_u64().unwrap() as u16;
        let want: Vec<bool> = labels.iter().map(|&l| u16::from(l) == label).collect();
        // the PNG: binary 0/255
        let mask_path = dir.join(format!("q.masks/{}.png", c["name"].as_str().unwrap()));
        assert_eq!(c["mask"], mask_path.to_str().unwrap());
        let mask = image::open(&mask_path).unwrap().to_luma8();
        assert_eq!((mask.width(), mask.height()), (w, h));
        assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        let got: Vec<bool> = mask.pixels().map(|p| p.0[0] == 255).collect();
        assert_eq!(got, want, "{}", c["name"]);
        // the RLE: COCO's [h, w] and counts, decoding to the same pixels
        let rle: CocoRle = serde_json::from_value(c["rle"].clone()).unwrap();
        assert_eq!(rle.size, [h, w]);
        assert_eq!(rle.decode().unwrap(), want);
        assert_eq!(rle.area().unwrap(), c["pixels"].as_u64().unwrap());
    }
}

#[test]
fn r21_json_lines_parse_one_per_image() {
    let Some(kit) = Kit::new() else { return };
    let a = kit.query_image("a.png", [230, 40, 40]);
    let b = kit.query_image("b.png", [40, 40, 230]);
    let out = kit.out();
    let res = kit.run(&[
        "segment",
        &a,
        &b,
        "--classes",
        "red,blue",
        "--out",
        &out,
        "--json",
    ]);
    let (stdout, stderr) = text(&res);
    assert!(res.status.success(), "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0]["image"].as_str().unwrap().ends_with("a.png"));
    assert!(lines[1]["image"].as_str().unwrap().ends_with("b.png"));
    assert!(lines.iter().all(|l| l["label_map"]["0"] == "background"));
    // errors under --json are JSON objects on stderr
    let res = kit.run(&["segment", &a, "--classes", "rde", "--json"]);
    let (_, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).expect(&stderr);
    assert!(err["error"].as_str().unwrap().contains("rde"), "{err}");
}

#[test]
fn r21_show_json_has_no_duplicate_keys() {
    let Some(kit) = Kit::new() else { return };
    let res = kit.run(&["show", "red", "--json"]);
    let (stdout, stderr) = text(&res);
    assert!(res.status.success(), "{stdout}{stderr}");
    let top: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
        .map(|l| l.trim().split('"').nth(1).unwrap())
        .collect();
    let mut unique = top.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), top.len(), "{top:?}");
    assert!(top.contains(&"created_unix"));
}

#[test]
fn r21_a_batch_survives_a_missing_file() {
    let Some(kit) = Kit::new() else { return };
    let a = kit.query_image("a.png", [230, 40, 40]);
    let missing = kit.data.path().join("missing.png");
    let out = kit.out();
    let res = kit.run(&[
        "segment",
        &a,
        missing.to_str().unwrap(),
        "--classes",
        "red,blue",
        "--out",
        &out,
    ]);
    let (stdout, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("missing.png") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(
        Path::new(&out).join("a.json").is_file(),
        "a.png was segmented"
    );
    // a glob that matches nothing is still an error
    let glob = format!("{}/*.nothing", kit.data.path().display());
    let res = kit.run(&["segment", &glob, "--classes", "red", "--out", &out]);
    assert_eq!(res.status.code(), Some(2), "{:?}", text(&res));
    // add --images takes a single file
    let one = kit.query_image("one.png", [40, 230, 40]);
    let res = kit.run(&[
        "add",
        "lime",
        "--images",
        &one,
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ]);
    assert!(res.status.success(), "{:?}", text(&res));
}

#[test]
fn r21_banks_lists_creates_and_removes() {
    let sb = crate::harness::Sandbox::bare();
    let out = sb.run(&["banks"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("no banks"), "{:?}", text(&out));
    let out = sb.run(&["banks", "create", "team"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("created bank team"));
    let out = sb.run(&["banks", "create", "team"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out = sb.run(&["banks", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "team");
    assert_eq!(v[0]["classes"], 0);
    // removing asks first; without a terminal it needs --yes
    let out = sb.run(&["banks", "remove", "team"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("--yes"));
    assert!(sb.home.path().join("banks/team").exists());
    let out = sb.run(&["banks", "remove", "team", "--yes"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!sb.home.path().join("banks/team").exists());
}

#[test]
fn r21_a_bank_typo_creates_nothing_and_suggests() {
    let sb = crate::harness::Sandbox::bare();
    assert!(sb.run(&["banks", "create", "team"]).status.success());
    let banks = sb.home.path().join("banks");
    for args in [
        vec!["list", "--bank", "taem"],
        vec!["show", "cat", "--bank", "taem"],
        vec!["segment", "x.png", "--classes", "cat", "--bank", "taem"],
        vec!["add", "cat", "--images", "nowhere", "--bank", "taem"],
    ] {
        let out = sb.run(&args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("did you mean `team`"), "{args:?}: {stderr}");
        assert!(!banks.join("taem").exists(), "{args:?} created the bank");
    }
    let out = sb.run(&["add", "cat", "--images", "nowhere", "--bank", "taem"]);
    assert!(text(&out).1.contains("--create"), "{:?}", text(&out));
}

#[test]
fn r21_every_subcommand_s_help_has_examples() {
    let sb = crate::harness::Sandbox::bare();
    for cmd in [
        "add", "segment", "eval", "banks", "list", "show", "remove", "rename", "export", "import",
        "merge", "migrate", "inspect", "verify", "models", "encode", "serve",
    ] {
        let out = sb.run(&[cmd, "--help"]);
        let (stdout, _) = text(&out);
        assert!(out.status.success(), "{cmd}");
        assert!(stdout.contains("Examples:"), "{cmd} --help: {stdout}");
        assert!(stdout.contains("See "), "{cmd} --help names no doc");
        assert!(stdout.contains("Global options"), "{cmd} --help");
        // only the commands that run a model advertise the runtime options
        let runs_a_model = ["add", "segment", "eval", "encode", "serve"].contains(&cmd);
        assert_eq!(stdout.contains("--provider"), runs_a_model, "{cmd} --help");
        assert_eq!(stdout.contains("--no-verify"), runs_a_model, "{cmd} --help");
        let threads = runs_a_model || ["remove", "rename", "import"].contains(&cmd);
        assert_eq!(stdout.contains("--threads"), threads, "{cmd} --help");
    }
    let (stdout, _) = text(&sb.run(&["models", "check", "--help"]));
    assert!(stdout.contains("--provider") && !stdout.contains("--no-verify"));
    // a missing --classes mentions --all-classes
    let (_, err) = text(&sb.run(&["segment", "x.png"]));
    assert!(err.contains("--all-classes"), "{err}");
}

#[test]
fn r21_messages_count_right_and_say_what_happened() {
    let Some(kit) = Kit::new() else { return };
    let data = kit.data.path();
    // one support image: "1 image", never "1 images"
    let one = crate::bank::support_dir(data, "green", [40, 230, 40], 1);
    let bank = std::path::PathBuf::from(kit.bank());
    let out = crate::bank::add_tiny(&kit.sb, &bank, "green", &one, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("added `green`"), "{stdout}");
    assert!(stdout.contains("1 image used"), "{stdout}");
    // --replace says "replaced"
    let out = crate::bank::add_tiny(&kit.sb, &bank, "green", &one, &["--replace"]);
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("replaced `green`"), "{stdout}");
    // rename onto an existing name says what to do, and changes nothing
    let out = kit.run(&["rename", "red", "blue"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ovdiff-bank remove blue"), "{stderr}");
    assert!(stderr.contains("pick another name"), "{stderr}");
    // verify --bank: singular counts, and whether it changed anything
    let out = kit.run(&["verify"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("nothing in the bank was changed"),
        "{stdout}"
    );
    assert!(stdout.contains(" 1 thumbnail "), "{stdout}");
    for wrong in [
        "1 images",
        "1 encoders",
        "1 classes",
        "1 thumbnails",
        "1 prototypes",
    ] {
        assert!(!stdout.contains(&format!(" {wrong}")), "{wrong}: {stdout}");
    }
    // info lines do not wear the error prefix
    let out = kit.run(&[
        "add",
        "cyan",
        "--images",
        one.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.lines().all(|l| !l.starts_with("ovdiff-bank:")),
        "{stderr}"
    );
}

#[test]
fn r21_encode_names_its_axis_order() {
    let Some(kit) = Kit::new() else { return };
    // a wide image (168 × 140): every size is [width, height]
    let img = kit.query_image("wide.png", [230, 40, 40]);
    let out = kit
        .sb
        .run(&["encode", &img, "--encoder", "tiny-encoder", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let (iw, ih) = (
        v["input_size"][0].as_u64().unwrap(),
        v["input_size"][1].as_u64().unwrap(),
    );
    let (gw, gh) = (
        v["grid"][0].as_u64().unwrap(),
        v["grid"][1].as_u64().unwrap(),
    );
    assert!(iw > ih, "input_size is [width, height]: {v}");
    assert!(gw > gh, "grid is [width, height]: {v}");
    let out = kit.sb.run(&["encode", &img, "--encoder", "tiny-encoder"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("{iw}×{ih} (width×height)"))
            && stdout.contains(&format!("{gw}×{gh} patches")),
        "{stdout}"
    );
}
