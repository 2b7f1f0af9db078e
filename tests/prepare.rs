//! `lorafuse prepare` on small folders written here: bucket sizes equal to training's (so
//! training crops nothing more), EXIF orientation, alpha backgrounds, the smart crop finding
//! the detailed region, duplicates / too-small / unreadable / name clashes reported, captions
//! carried, a second run keeping what is done, and bad input exiting 2.

use crate::common;

use std::fs;
use std::path::Path;

use common::images::jpeg_with_orientation;
use common::tools::{assert_bad_input, lorafuse, TempDir};
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use lorafuse::data::bucket::{make_bucket_resolutions, Bucketing};
use lorafuse::data::{scan, DataOptions};
use lorafuse::prepare::{prepare, CropMode, DropReason, PrepareOptions, PrepareReport};

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A picture with detail everywhere (so no two are equal and every crop has content).
fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 251;
        Rgb([v as u8, (v * 3 % 256) as u8, (255 - v) as u8])
    })
}

fn save(img: &RgbImage, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn run(o: &PrepareOptions) -> PrepareReport {
    prepare(o, &|_, _| {}).unwrap()
}

fn load(path: &Path) -> RgbImage {
    image::open(path).unwrap().into_rgb8()
}

/// Training's data options for a folder prepared with `o`.
fn training_options(o: &PrepareOptions) -> DataOptions {
    DataOptions {
        train_data_dir: o.output.clone(),
        resolution: o.resolution,
        enable_bucket: o.buckets,
        min_bucket_reso: o.min_bucket_reso,
        max_bucket_reso: o.max_bucket_reso,
        bucket_reso_steps: o.bucket_reso_steps,
        ..DataOptions::default()
    }
}

#[test]
fn bucketed_images_are_training_buckets_and_training_crops_nothing_more() {
    let t = TempDir::new("prep-buckets");
    let sizes: [(usize, usize); 5] = [(640, 480), (300, 600), (256, 256), (1000, 400), (333, 517)];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        save(
            &picture(w as u32, h as u32, i as u32),
            &t.path(&format!("in/10_sks dog/img{i}.png")),
        );
        write(
            &t.path(&format!("in/10_sks dog/img{i}.txt")),
            format!("sks dog, picture {i}").as_bytes(),
        );
    }
    let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
    o.resolution = (256, 256);
    o.buckets = true;
    o.min_bucket_reso = 128;
    o.max_bucket_reso = 512;
    let report = run(&o);
    assert_eq!(report.prepared.len(), sizes.len(), "{report}");
    assert!(report.dropped.is_empty(), "{report}");

    // Each written size is the bucket training gives the original picture.
    let buckets = Bucketing::Predefined(make_bucket_resolutions((256, 256), 128, 512, 64));
    for p in &report.prepared {
        let stem = p.rel.file_stem().unwrap().to_str().unwrap();
        let i: usize = stem.trim_start_matches("img").parse().unwrap();
        assert_eq!(p.original, sizes[i]);
        assert_eq!(
            p.size,
            buckets.select(sizes[i]).bucket,
            "{}",
            p.rel.display()
        );
        let out = load(&t.path("out").join(&p.out));
        assert_eq!((out.width() as usize, out.height() as usize), p.size);
        let caption = fs::read_to_string(t.path("out").join(p.out.with_extension("txt"))).unwrap();
        assert_eq!(caption, format!("sks dog, picture {i}"));
    }

    // Training scans the output: the same folder, every image in the bucket of its own size,
    // resized to exactly that size (no second crop), with its caption.
    let d = scan(&training_options(&o)).unwrap();
    assert_eq!(d.items.len(), sizes.len());
    for item in &d.items {
        assert_eq!(item.bucket, item.size, "{}", item.path.display());
        assert_eq!(item.resized, item.size, "{}", item.path.display());
        assert!(item.path.to_str().unwrap().contains("10_sks dog"));
    }
}

#[test]
fn exif_orientation_is_applied_before_cropping() {
    let t = TempDir::new("prep-exif");
    // Stored 40x24, top half red, bottom blue; EXIF 6 shows it 24x40 with red on the right.
    let img = RgbImage::from_fn(40, 24, |_, y| {
        Rgb(if y < 12 { [250, 0, 0] } else { [0, 0, 250] })
    });
    write(&t.path("in/photo.jpg"), &jpeg_with_orientation(&img, 6));
    let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
    o.resolution = (24, 40);
    let report = run(&o);
    assert_eq!(report.prepared[0].original, (24, 40), "{report}");
    let out = load(&t.path("out/photo.png"));
    assert_eq!((out.width(), out.height()), (24, 40));
    for y in [2, 20, 37] {
        let (left, right) = (out.get_pixel(2, y).0, out.get_pixel(21, y).0);
        assert!(
            left[2] > 200 && left[0] < 50,
            "left should be blue: {left:?}"
        );
        assert!(
            right[0] > 200 && right[2] < 50,
            "right should be red: {right:?}"
        );
    }
}

#[test]
fn transparent_pixels_take_the_chosen_background() {
    let t = TempDir::new("prep-alpha");
    // Left half transparent, right half opaque green.
    let img = RgbaImage::from_fn(32, 32, |x, _| {
        Rgba(if x < 16 {
            [9, 9, 9, 0]
        } else {
            [0, 200, 0, 255]
        })
    });
    fs::create_dir_all(t.path("in")).unwrap();
    img.save(t.path("in/cut.png")).unwrap();
    for (background, want) in [(None, [255, 255, 255]), (Some([0, 0, 0]), [0, 0, 0])] {
        let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
        o.resolution = (32, 32);
        o.overwrite = true;
        if let Some(b) = background {
            o.background = b;
        }
        run(&o);
        let out = load(&t.path("out/cut.png"));
        assert_eq!(out.get_pixel(3, 10).0, want);
        assert_eq!(out.get_pixel(28, 10).0, [0, 200, 0]);
    }
}

/// Mean squared difference of neighbouring pixels: high for a checkerboard, 0 for flat.
fn roughness(img: &RgbImage) -> f64 {
    let mut sum = 0.0;
    for y in 0..img.height() {
        for x in 1..img.width() {
            let d = img.get_pixel(x, y).0[0] as f64 - img.get_pixel(x - 1, y).0[0] as f64;
            sum += d * d;
        }
    }
    sum / (img.width() * img.height()) as f64
}

#[test]
fn smart_crop_keeps_the_detailed_region_center_does_not() {
    let t = TempDir::new("prep-smart");
    // 384x128: flat grey, with a checkerboard in the right third.
    let img = RgbImage::from_fn(384, 128, |x, y| {
        if x >= 256 && (x / 4 + y / 4) % 2 == 0 {
            Rgb([250, 250, 250])
        } else if x >= 256 {
            Rgb([10, 10, 10])
        } else {
            Rgb([120, 120, 120])
        }
    });
    save(&img, &t.path("in/wide.png"));
    let mut rough = Vec::new();
    for crop in [CropMode::Smart, CropMode::Center] {
        let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
        o.resolution = (128, 128);
        o.crop = crop;
        o.overwrite = true;
        run(&o);
        let out = load(&t.path("out/wide.png"));
        assert_eq!((out.width(), out.height()), (128, 128));
        rough.push(roughness(&out));
    }
    // The smart window is the checkerboard (every 4th column pair differs by 240²/4 on
    // average); the centre one is flat grey.
    assert!(rough[0] > 5000.0, "smart crop roughness {}", rough[0]);
    assert!(rough[1] < 1.0, "centre crop roughness {}", rough[1]);
}

#[test]
fn duplicates_small_unreadable_and_clashing_images_are_reported_and_the_rest_written() {
    let t = TempDir::new("prep-drops");
    save(&picture(300, 300, 1), &t.path("in/a.png"));
    fs::copy(t.path("in/a.png"), t.path("in/b_copy.png")).unwrap();
    save(&picture(60, 60, 2), &t.path("in/c_small.png"));
    write(&t.path("in/d_broken.png"), b"\x89PNG\r\n\x1a\nnot really");
    save(&picture(300, 300, 3), &t.path("in/e.png"));
    save(&picture(300, 300, 4), &t.path("in/e.jpg"));
    save(&picture(4000, 300, 5), &t.path("in/f_strip.png"));
    write(&t.path("in/notes.md"), b"# my notes");
    write(&t.path("in/orphan.txt"), b"a caption without an image");

    let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
    o.resolution = (256, 256);
    let report = run(&o);
    let written: Vec<_> = report
        .prepared
        .iter()
        .map(|p| p.rel.to_str().unwrap().to_string())
        .collect();
    assert_eq!(written, ["a.png", "e.jpg"], "{report}");
    let reason = |name: &str| {
        report
            .dropped
            .iter()
            .find(|(p, _)| p.to_str() == Some(name))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{name} not reported: {report}"))
    };
    assert_eq!(
        reason("b_copy.png"),
        DropReason::Duplicate { of: "a.png".into() }
    );
    match reason("c_small.png") {
        DropReason::TooSmall { size, scale } => {
            assert_eq!(size, (60, 60));
            assert!((scale - 256.0 / 60.0).abs() < 0.02, "{scale}");
        }
        other => panic!("c_small.png: {other}"),
    }
    assert!(matches!(reason("d_broken.png"), DropReason::Unreadable(_)));
    assert_eq!(
        reason("e.png"),
        DropReason::NameClash {
            with: "e.jpg".into()
        }
    );
    assert!(matches!(
        reason("f_strip.png"),
        DropReason::Elongated { .. }
    ));
    let ignored: Vec<_> = report.ignored.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(ignored, ["notes.md", "orphan.txt"]);
    let text = report.to_string();
    assert!(text.contains("prepared 2 images"), "{text}");
    assert!(
        text.contains(
            "dropped 5: 1 too small, 1 too elongated, 1 duplicates, 1 unreadable, 1 name clashes"
        ),
        "{text}"
    );
    assert!(!t.path("out/b_copy.png").exists());

    // With a larger allowance the small one is kept (enlarged).
    o.max_upscale = 5.0;
    let again = run(&o);
    assert_eq!(again.existing.len(), 2, "{again}");
    assert_eq!(again.prepared.len(), 1, "{again}");
    assert!(again.prepared[0].scale > 4.0);
}

#[test]
fn a_second_run_keeps_what_is_done_and_overwrite_redoes_it() {
    let t = TempDir::new("prep-resume");
    for i in 0..3 {
        save(&picture(200, 150, i), &t.path(&format!("in/{i}.png")));
    }
    let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
    o.resolution = (128, 128);
    assert_eq!(run(&o).prepared.len(), 3);
    let second = run(&o);
    assert!(second.prepared.is_empty());
    assert_eq!(second.existing.len(), 3);
    o.overwrite = true;
    assert_eq!(run(&o).prepared.len(), 3);
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(t.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn metadata_captions_become_sidecars_and_crop_none_only_shrinks() {
    let t = TempDir::new("prep-meta");
    save(&picture(1024, 768, 1), &t.path("in/big.png"));
    save(&picture(400, 300, 2), &t.path("in/small.png"));
    write(
        &t.path("in/metadata.jsonl"),
        b"{\"file_name\": \"big.png\", \"text\": \"a big picture\"}\n",
    );
    let mut o = PrepareOptions::new(t.path("in"), t.path("out"));
    o.crop = CropMode::None;
    let report = run(&o);
    let by_name = |n: &str| {
        report
            .prepared
            .iter()
            .find(|p| p.rel.to_str() == Some(n))
            .unwrap()
            .clone()
    };
    // 1024x768 shrunk to 512² area keeping 4:3: 591x443; 400x300 is kept as it is.
    assert_eq!(by_name("big.png").size, (591, 443));
    assert_eq!(by_name("small.png").size, (400, 300));
    assert_eq!(
        fs::read_to_string(t.path("out/big.txt")).unwrap(),
        "a big picture"
    );
    assert!(!t.path("out/small.txt").exists());
    assert!(report.ignored.is_empty(), "{report}");
}

#[test]
fn the_command_prepares_a_folder_and_refuses_bad_input() {
    let t = TempDir::new("prep-cli");
    save(&picture(300, 200, 1), &t.path("in/x.png"));
    let (input, output) = (t.path("in"), t.path("out"));
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let (code, err) = lorafuse(&["prepare", i, o, "--resolution", "128", "--crop", "smart"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(load(&t.path("out/x.png")).dimensions(), (128, 128), "{err}");
    let missing = t.path("nothing");
    let inside = t.path("in/out");
    assert_bad_input(&[
        (
            format!("prepare {} {o}", missing.display()),
            "does not exist",
        ),
        (
            format!("prepare {i} {}", inside.display()),
            "inside the input",
        ),
        (format!("prepare {i} {o} --crop left"), "--crop left"),
        (format!("prepare {i} {o} --resolution 500"), "resolution"),
        (
            format!("prepare {i} {o} --max-upscale 0.5"),
            "--max-upscale",
        ),
        (
            format!("prepare {i} {o} --background pink"),
            "--background pink",
        ),
        (format!("prepare {i} {o} --format gif"), "--format gif"),
    ]);
}

/// Runs the binary; (exit code, stdout).
fn lorafuse_stdout(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn tags_counts_and_edits_captions_after_a_dry_run() {
    let t = TempDir::new("prep-tags");
    let captions = [
        "1girl, long_hair, white background, smile",
        "1girl, long hair, simple background, sks style",
        "landscape, 1girl, 1girl",
    ];
    for (i, c) in captions.iter().enumerate() {
        save(
            &picture(16, 16, i as u32),
            &t.path(&format!("d/5_x/{i}.png")),
        );
        write(&t.path(&format!("d/5_x/{i}.txt")), c.as_bytes());
    }
    save(&picture(16, 16, 9), &t.path("d/5_x/uncaptioned.png"));
    let dir = t.path("d");
    let d = dir.to_str().unwrap();

    let (code, table) = lorafuse_stdout(&["tags", d]);
    assert_eq!(code, Some(0));
    assert!(table.starts_with("3 captions, 7 distinct tags"), "{table}");
    assert!(table.contains("     3  1girl"), "{table}");
    assert!(table.contains("     2  long_hair"), "{table}");

    let edit = [
        "tags",
        d,
        "--trigger",
        "sks style",
        "--remove",
        "*background",
        "--replace",
        "1girl=woman",
        "--dedupe",
    ];
    let (code, dry) = lorafuse_stdout(&[&edit[..], &["--dry-run"]].concat());
    assert_eq!(code, Some(0));
    assert!(dry.contains("would change 3 of 3 captions"), "{dry}");
    assert!(
        dry.contains("  + sks style, woman, long_hair, smile"),
        "{dry}"
    );
    let read = |i: usize| fs::read_to_string(t.path(&format!("d/5_x/{i}.txt"))).unwrap();
    assert_eq!(read(0), captions[0], "a dry run writes nothing");

    let (code, done) = lorafuse_stdout(&edit);
    assert_eq!(code, Some(0));
    assert!(done.contains("changed 3 of 3 captions"), "{done}");
    assert_eq!(read(0), "sks style, woman, long_hair, smile");
    assert_eq!(read(1), "sks style, woman, long hair");
    assert_eq!(read(2), "sks style, landscape, woman");
    let (_, again) = lorafuse_stdout(&edit);
    assert!(again.contains("changed 0 of 3"), "{again}");

    assert_bad_input(&[(format!("tags {d} --replace woman"), "--replace woman")]);
}

/// `train`'s automatic steps (config keys auto_crop, auto_caption; src/prepare/auto.rs): the
/// pictures prepared into output_dir/auto/prepared at the config's resolution, the one
/// without a caption captioned by the tiny tagger of tests/caption.rs, the other's caption
/// carried; a second run redoes neither; a changed setting redoes the captioning step.
#[test]
fn train_prepares_and_captions_once() {
    use lorafuse::config::TrainConfig;
    use lorafuse::prepare::auto::auto_prepare;
    let t = TempDir::new("auto-prepare");
    let data = t.path("data");
    save(&picture(96, 80, 1), &data.join("a.png"));
    save(&picture(70, 90, 2), &data.join("b.png"));
    write(&data.join("b.txt"), b"my caption\n");
    let tagger = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tagger/vit-v3");
    let yaml = t.path("config.yaml");
    let config = |threshold: f64| {
        write(
            &yaml,
            format!(
                "train_data_dir: {}\nbase_model: {}\noutput_dir: {}\nresolution: 64\n\
                 auto_crop: center\nauto_caption: {}\nauto_caption_threshold: {threshold}\n",
                data.display(),
                t.path("model.safetensors").display(),
                t.path("out").display(),
                tagger.display()
            )
            .as_bytes(),
        );
        TrainConfig::load(&yaml, &[] as &[&str]).unwrap()
    };
    let be = lorafuse::CpuBackend::new();
    let cfg = config(0.5);
    let first = auto_prepare(&cfg, &be, &|_, _, _| {}).unwrap();
    let prepared = t.path("out/auto/prepared");
    assert_eq!(first.data_dir, prepared);
    assert!(
        first.notes[0].contains("prepared into"),
        "{:?}",
        first.notes
    );
    assert!(
        first.notes[1].contains("captioned 1 pictures; kept 1"),
        "{:?}",
        first.notes
    );
    assert_eq!(load(&prepared.join("a.png")).dimensions(), (64, 64));
    assert_eq!(
        fs::read_to_string(prepared.join("b.txt")).unwrap(),
        "my caption\n"
    );
    // a.png's tags from the tiny tagger at 0.5 (its probabilities are tests/caption.rs's
    // concern): some tag was written.
    let a = fs::read_to_string(prepared.join("a.txt")).unwrap();
    assert!(!a.trim().is_empty(), "{a:?}");

    let again = auto_prepare(&cfg, &be, &|_, _, _| {}).unwrap();
    assert_eq!(again.data_dir, prepared);
    assert!(
        again.notes.iter().all(|n| n.contains("up to date")),
        "{:?}",
        again.notes
    );
    let changed = auto_prepare(&config(0.6), &be, &|_, _, _| {}).unwrap();
    assert!(
        changed.notes[0].contains("up to date"),
        "{:?}",
        changed.notes
    );
    assert!(
        changed.notes[1].contains("captioned 0 pictures; kept 2"),
        "{:?}",
        changed.notes
    );
    // Two at once, as a torchrun launch's ranks: one at a time in output_dir/auto (its lock),
    // so the captioning is done once and the other reuses it.
    let cfg = config(0.7);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| auto_prepare(&cfg, &be, &|_, _, _| {}).unwrap());
        let b = s.spawn(|| auto_prepare(&cfg, &be, &|_, _, _| {}).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((&a.data_dir, &b.data_dir), (&prepared, &prepared));
    let notes = [a.notes, b.notes].concat();
    let count = |what: &str| notes.iter().filter(|n| n.contains(what)).count();
    assert_eq!(count("captioned 0 pictures; kept 2"), 1, "{notes:?}");
    assert_eq!(count("up to date"), 3, "{notes:?}");
    assert!(!t
        .path("out/auto")
        .join(lorafuse::prepare::lock::LOCK_FILE)
        .exists());
}
