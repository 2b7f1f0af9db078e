//! The data pipeline on small folders written here (PNG, JPEG, BMP and WebP through the image
//! crate, captions, repeat folders, metadata files): pairing, every error and warning, the
//! validation split, kohya's bucket math on hand-worked cases, pixels, caption augmentation,
//! batching and determinism.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use lorafuse::data::bucket::{cover_size, make_bucket_resolutions, Bucketing};
use lorafuse::data::hash::xxh64;
use lorafuse::data::metadata::parse_csv;
use lorafuse::data::{
    balance_reg, epoch_batches, load_pixels, plain_caption, process_caption, scan, scan_sources,
    validation_batches, CaptionSource, DataError, DataOptions, DataWarning, Dataset, Item, Source,
};
use lorafuse::rng::Rng;

use crate::common;
use common::images::jpeg_with_orientation;

// ---------------------------------------------------------------------------------------------
// Temp folders and files

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-data-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// Write `text` to `rel`, creating folders.
    fn text(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
    fn bytes(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        p
    }
    /// An RGB image of `w`x`h` filled by `f`, in the format of `rel`'s extension.
    fn image(&self, rel: &str, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)))
            .save(&p)
            .unwrap();
        p
    }
    /// A gray gradient image plus its caption file.
    fn captioned(&self, rel: &str, w: u32, h: u32, caption: &str) -> PathBuf {
        let p = self.image(rel, w, h, |x, y| [(x * 7) as u8, (y * 5) as u8, 128]);
        fs::write(p.with_extension("txt"), caption).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(dir: &Path) -> DataOptions {
    DataOptions {
        train_data_dir: dir.to_path_buf(),
        ..DataOptions::default()
    }
}

fn scan_ok(o: &DataOptions) -> Dataset {
    match scan(o) {
        Ok(d) => d,
        Err(e) => panic!("scan failed: {e}"),
    }
}

fn scan_err(o: &DataOptions) -> DataError {
    match scan(o) {
        Ok(d) => panic!("scan succeeded with {} items", d.items.len()),
        Err(e) => e,
    }
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 13) as u8, (y * 29) as u8, (x ^ y) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn names(d: &Dataset) -> Vec<String> {
    d.items
        .iter()
        .map(|i| {
            i.path
                .strip_prefix(&d.train_data_dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Finding images and captions

#[test]
fn repeat_folders_and_caption_files() {
    let t = TempDir::new("repeats");
    t.captioned("a.png", 64, 64, "root image");
    t.captioned("10_cat/b.png", 64, 64, "cat b");
    t.captioned("10_cat/c.jpg", 64, 48, "cat c\n");
    t.captioned("3_dog/d.bmp", 48, 64, "  dog d  ");
    t.captioned("3_dog/e.webp", 64, 64, "dog e");
    t.captioned("3_dog/F.PNG", 64, 64, "upper-case extension");
    t.text("3_dog/notes.md", "not an image");
    let d = scan_ok(&opts(t.path()));
    assert_eq!(
        names(&d),
        [
            "10_cat/b.png",
            "10_cat/c.jpg",
            "3_dog/F.PNG",
            "3_dog/d.bmp",
            "3_dog/e.webp",
            "a.png"
        ]
    );
    let repeats: Vec<usize> = d.items.iter().map(|i| i.repeats).collect();
    assert_eq!(repeats, [10, 10, 3, 3, 3, 1]);
    assert_eq!(d.samples_per_epoch(), 10 + 10 + 3 + 3 + 3 + 1);
    let captions: Vec<&str> = d.items.iter().map(|i| i.caption.as_str()).collect();
    assert_eq!(
        captions,
        [
            "cat b",
            "cat c",
            "upper-case extension",
            "dog d",
            "dog e",
            "root image"
        ]
    );
    assert_eq!(
        d.items[0].caption_source,
        CaptionSource::Sidecar(t.join("10_cat/b.txt"))
    );
    assert_eq!(d.items[1].size, (64, 48));
    assert_eq!(d.items[3].size, (48, 64));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert!(d.validation.is_empty());
}

#[test]
fn caption_extension_option() {
    let t = TempDir::new("capext");
    t.image("1_x/a.png", 32, 32, |_, _| [0, 0, 0]);
    t.text("1_x/a.caption", "from .caption");
    t.text("1_x/a.txt", "from .txt");
    let mut o = opts(t.path());
    o.caption_extension = "caption".into(); // leading dot optional
    let d = scan_ok(&o);
    assert_eq!(d.items[0].caption, "from .caption");
    // a.txt is not a caption file under this option, so no orphan warning for it either.
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn metadata_csv_with_quoted_commas() {
    let t = TempDir::new("csv");
    t.image("5_style/one.png", 32, 32, |_, _| [1, 2, 3]);
    t.image("5_style/two.png", 32, 32, |_, _| [4, 5, 6]);
    t.image("5_style/three.png", 32, 32, |_, _| [7, 8, 9]);
    t.text(
        "5_style/metadata.csv",
        "\u{feff}file_name,text\r\n\
         one.png,\"1girl, solo, smile\"\r\n\
         two.png,\"a \"\"quoted\"\" word, and a comma\"\r\n\
         three.png, \"spaces before the quote, fine\"\r\n",
    );
    let d = scan_ok(&opts(t.path()));
    let by_name: BTreeMap<String, &str> = names(&d)
        .into_iter()
        .zip(d.items.iter().map(|i| i.caption.as_str()))
        .collect();
    assert_eq!(by_name["5_style/one.png"], "1girl, solo, smile");
    assert_eq!(by_name["5_style/two.png"], "a \"quoted\" word, and a comma");
    assert_eq!(
        by_name["5_style/three.png"],
        "spaces before the quote, fine"
    );
    assert_eq!(
        d.items[0].caption_source,
        CaptionSource::Metadata {
            path: t.join("5_style/metadata.csv"),
            line: 2
        }
    );
    assert!(d.items.iter().all(|i| i.repeats == 5));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn metadata_jsonl_here_and_at_the_root() {
    let t = TempDir::new("jsonl");
    t.image("a.png", 32, 32, |_, _| [0, 0, 0]);
    t.image("2_x/b.jpg", 32, 32, |_, _| [0, 0, 0]);
    t.image("2_x/c.png", 32, 32, |_, _| [0, 0, 0]);
    // The root file covers a.png and, by relative path, 2_x/b.jpg; 2_x has its own file for c.
    t.text(
        "metadata.jsonl",
        "{\"file_name\": \"a.png\", \"text\": \"root a\"}\n\
         \n\
         {\"file_name\": \"2_x/b.jpg\", \"text\": \"b via root\", \"extra\": 1}\n\
         {\"file_name\": \"gone.png\", \"text\": \"no such image\"}\n",
    );
    t.text(
        "2_x/metadata.jsonl",
        "{\"file_name\": \"./c.png\", \"caption\": \"c here\"}\n",
    );
    let d = scan_ok(&opts(t.path()));
    let captions: Vec<&str> = d.items.iter().map(|i| i.caption.as_str()).collect();
    assert_eq!(names(&d), ["2_x/b.jpg", "2_x/c.png", "a.png"]);
    assert_eq!(captions, ["b via root", "c here", "root a"]);
    assert_eq!(
        d.warnings,
        [DataWarning::OrphanMetadataRow {
            metadata: t.join("metadata.jsonl"),
            line: 4,
            file_name: "gone.png".into()
        }]
    );
}

#[test]
fn sidecar_wins_over_metadata_with_a_warning() {
    let t = TempDir::new("conflict");
    t.captioned("1_x/a.png", 32, 32, "from the txt");
    t.text(
        "1_x/metadata.jsonl",
        "{\"file_name\":\"a.png\",\"text\":\"from metadata\"}\n",
    );
    let d = scan_ok(&opts(t.path()));
    assert_eq!(d.items[0].caption, "from the txt");
    assert!(matches!(
        d.warnings[..],
        [DataWarning::CaptionConflict { line: 1, .. }]
    ));
}

#[test]
fn csv_reader() {
    let recs =
        parse_csv("a,b,c\n\"x, y\",\"he said \"\"hi\"\"\",\"two\nlines\"\r\nlast,,\n").unwrap();
    let fields: Vec<Vec<&str>> = recs
        .iter()
        .map(|r| r.fields.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        fields,
        [
            vec!["a", "b", "c"],
            vec!["x, y", "he said \"hi\"", "two\nlines"],
            vec!["last", "", ""]
        ]
    );
    assert_eq!(recs.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 4]);
    // No trailing newline; a quote inside an unquoted field is a character.
    let recs = parse_csv("x,5\" tall").unwrap();
    assert_eq!(recs[0].fields, ["x", "5\" tall"]);
    let err = parse_csv("file_name,text\na.png,\"never closed\n").unwrap_err();
    assert_eq!(err.0, 2);
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the file; all of them at once

#[test]
fn missing_folder() {
    let t = TempDir::new("missing");
    let e = scan_err(&opts(&t.join("nope")));
    assert!(matches!(e, DataError::FolderMissing { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
    // A file where the folder should be.
    let f = t.text("file", "x");
    let e = scan_err(&opts(&f));
    assert!(matches!(e, DataError::NotAFolder { .. }), "{e}");
}

#[test]
fn empty_folder_names_what_was_looked_for() {
    let t = TempDir::new("empty");
    t.text("readme.md", "no images");
    t.captioned("mychar/a.png", 32, 32, "in a folder without a repeat count");
    let e = scan_err(&opts(t.path()));
    let msg = e.to_string();
    assert!(matches!(e, DataError::Empty { .. }), "{msg}");
    for needle in [
        t.path().to_str().unwrap(),
        "no training images found",
        ".png, .jpg, .jpeg, .webp and .bmp",
        "N_name",
        "Ignored subfolders without a repeat count: mychar",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn corrupt_and_truncated_images() {
    let t = TempDir::new("corrupt");
    t.captioned("1_x/good.png", 32, 32, "good");
    let mut rng = Rng::new(7);
    let junk: Vec<u8> = (0..500).map(|_| rng.next_u64() as u8).collect();
    t.bytes("1_x/random.png", &junk);
    t.text("1_x/random.txt", "junk");
    let png = png_bytes(64, 64);
    t.bytes("1_x/truncated.png", &png[..png.len() * 2 / 3]);
    t.text("1_x/truncated.txt", "cut");
    // The JPEG decoder alone would fill a cut-off scan with grey and succeed.
    let jpg = fs::read(t.image("1_x/cut.jpg", 64, 64, |x, y| [x as u8, y as u8, 0])).unwrap();
    t.bytes("1_x/cut.jpg", &jpg[..jpg.len() - 100]);
    t.text("1_x/cut.txt", "cut");
    let e = scan_err(&opts(t.path()));
    let problems = e.problems();
    assert_eq!(problems.len(), 3, "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("3 problems in the training data:"), "{msg}");
    assert!(
        msg.contains("cut.jpg: cannot decode image: JPEG data ends before its end-of-image marker")
    );
    for name in ["random.png", "truncated.png", "cut.jpg"] {
        let line = msg
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not in {msg}"));
        assert!(line.contains("cannot decode image"), "{line}");
        assert!(line.ends_with("Remove or re-export the file."), "{line}");
    }
    assert!(!msg.contains("good.png"));
}

#[test]
fn image_without_caption_names_the_expected_file() {
    let t = TempDir::new("nocap");
    t.image("lonely.jpg", 32, 32, |_, _| [9, 9, 9]);
    let e = scan_err(&opts(t.path()));
    let msg = e.to_string();
    assert!(matches!(e, DataError::MissingCaption { .. }), "{msg}");
    let expected = t.join("lonely.txt");
    assert!(msg.contains(expected.to_str().unwrap()), "{msg}");
    assert!(
        msg.starts_with(t.join("lonely.jpg").to_str().unwrap()),
        "{msg}"
    );
}

/// kohya's DreamBooth captions: an image without a caption file in `N_<class tokens>` is
/// captioned with the class tokens; directly in train_data_dir, with `class_tokens`, and it
/// counts `num_repeats` times.
#[test]
fn images_without_captions_take_their_class_tokens() {
    let t = TempDir::new("classtokens");
    t.image("4_sks dog/a.png", 32, 32, |_, _| [9, 9, 9]);
    t.image("4_sks dog/b.png", 32, 32, |_, _| [1, 2, 3]);
    t.text("4_sks dog/b.txt", "sks dog, running");
    t.image("c.png", 32, 32, |_, _| [5, 5, 5]);
    let o = DataOptions {
        class_tokens: Some("a dog".into()),
        num_repeats: 3,
        ..opts(t.path())
    };
    let ds = scan(&o).unwrap();
    let by_name = |n: &str| ds.items.iter().find(|i| i.path.ends_with(n)).unwrap();
    assert_eq!(by_name("a.png").caption, "sks dog");
    assert_eq!(by_name("a.png").caption_source, CaptionSource::ClassTokens);
    assert_eq!(by_name("b.png").caption, "sks dog, running");
    assert_eq!(
        (by_name("c.png").caption.as_str(), by_name("c.png").repeats),
        ("a dog", 3)
    );
    assert_eq!(by_name("a.png").repeats, 4);
}

#[test]
fn metadata_missing_a_row() {
    let t = TempDir::new("norow");
    t.image("1_x/a.png", 32, 32, |_, _| [0, 0, 0]);
    t.image("1_x/b.png", 32, 32, |_, _| [0, 0, 0]);
    t.text("1_x/metadata.csv", "file_name,text\na.png,only a\n");
    let e = scan_err(&opts(t.path()));
    let msg = e.to_string();
    assert!(matches!(e, DataError::NoMetadataRow { .. }), "{msg}");
    assert!(
        msg.contains("b.png") && msg.contains("metadata.csv"),
        "{msg}"
    );
    assert!(msg.contains("no row with file_name \"b.png\""), "{msg}");
}

#[test]
fn broken_metadata_files() {
    let t = TempDir::new("badmeta");
    t.image("1_a/x.png", 32, 32, |_, _| [0, 0, 0]);
    t.text(
        "1_a/metadata.jsonl",
        "{\"file_name\": \"x.png\", \"text\": \"ok\"}\n{not json\n",
    );
    t.image("1_b/y.png", 32, 32, |_, _| [0, 0, 0]);
    t.text("1_b/metadata.csv", "file_name,text\ny.png,a, b\n");
    t.image("1_c/z.png", 32, 32, |_, _| [0, 0, 0]);
    t.text("1_c/metadata.csv", "name,caption\nz.png,z\n");
    t.image("1_d/w.png", 32, 32, |_, _| [0, 0, 0]);
    t.text("1_d/metadata.csv", "file_name,text\nw.png,w\n");
    t.text("1_d/metadata.jsonl", "");
    let msg = scan_err(&opts(t.path())).to_string();
    for needle in [
        "1_a/metadata.jsonl, line 2: not valid JSON",
        "1_b/metadata.csv, line 2: 3 fields, but the header has 2",
        "1_c/metadata.csv, line 1: header row has columns [name, caption]",
        "1_d: has both metadata.jsonl and metadata.csv",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn all_problems_at_once_with_a_capped_list() {
    let t = TempDir::new("many");
    // Directly in train_data_dir, where no class tokens stand in for a missing caption.
    for i in 0..25 {
        t.image(&format!("img{i:02}.png"), 16, 16, |_, _| [0, 0, 0]);
    }
    t.bytes("zz_bad.png", b"not a png at all");
    // 26 images without captions, one of them also corrupt.
    let e = scan_err(&opts(t.path()));
    assert_eq!(e.problems().len(), 27);
    let msg = e.to_string();
    assert!(
        msg.starts_with("27 problems in the training data:"),
        "{msg}"
    );
    assert_eq!(msg.lines().filter(|l| l.starts_with("  - ")).count(), 20);
    assert!(msg.ends_with("\n  and 7 more"), "{msg}");
    // The corrupt file is reported even though its caption is missing too.
    assert!(e
        .problems()
        .iter()
        .any(|p| matches!(p, DataError::Decode { path, .. } if path.ends_with("zz_bad.png"))));
}

#[test]
fn bad_options_all_at_once() {
    let t = TempDir::new("opts");
    let o = DataOptions {
        resolution: (500, 512),
        caption_dropout_rate: 1.5,
        validation_split: 1.0,
        min_bucket_reso: 100,
        ..opts(t.path())
    };
    let e = scan_err(&o);
    let msg = e.to_string();
    for needle in [
        "resolution = 500,512 is invalid",
        "caption_dropout_rate = 1.5",
        "validation_split = 1",
        "min_bucket_reso/max_bucket_reso = 100/1024",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    let o = DataOptions {
        max_bucket_reso: 512,
        resolution: (768, 512),
        ..opts(t.path())
    };
    assert!(scan_err(&o).to_string().contains("max_bucket_reso = 512"));
}

#[test]
fn no_upscale_image_smaller_than_a_step() {
    let t = TempDir::new("tiny");
    t.captioned("1_x/tiny.png", 40, 200, "tiny");
    let o = DataOptions {
        bucket_no_upscale: true,
        ..opts(t.path())
    };
    let msg = scan_err(&o).to_string();
    assert!(msg.contains("tiny.png: image is 40x200"), "{msg}");
    assert!(msg.contains("0x192 bucket"), "{msg}");
}

#[test]
fn extreme_aspect_ratio_is_refused() {
    let t = TempDir::new("strip");
    // 8x400 (aspect 0.02) in the 256x1024 bucket (0.25): resized to 256x12800, 12.5 times the
    // bucket's area.
    t.captioned("1_x/strip.png", 8, 400, "strip");
    t.captioned("1_x/ok.png", 40, 400, "10:1 is fine: 2.5 times");
    let e = scan_err(&opts(t.path()));
    let msg = e.to_string();
    assert!(matches!(e, DataError::ExtremeAspect { .. }), "{msg}");
    assert!(
        msg.contains(
            "strip.png: image is 8x400; covering its 256x1024 bucket would crop away more than 88%"
        ),
        "{msg}"
    );
}

#[test]
fn warnings_are_collected_not_printed() {
    let t = TempDir::new("warn");
    t.captioned("1_x/a.png", 32, 32, "fine");
    t.captioned("1_x/empty.png", 32, 32, "   ");
    t.captioned("1_x/multi.png", 32, 32, "first line\nsecond line\n");
    t.text("1_x/orphan.txt", "caption without image");
    t.captioned("1_x/deeper/z.png", 32, 32, "not scanned");
    t.captioned("notes/n.png", 32, 32, "ignored folder");
    t.captioned("0_never/n.png", 32, 32, "zero repeats");
    t.captioned(
        ".hidden/h.png",
        32,
        32,
        "hidden folders are skipped silently",
    );
    let d = scan_ok(&opts(t.path()));
    assert_eq!(names(&d), ["1_x/a.png", "1_x/empty.png", "1_x/multi.png"]);
    assert_eq!(d.items[1].caption, "");
    assert_eq!(d.items[2].caption, "first line");
    let msgs: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(d.warnings.len(), 6, "{msgs:#?}");
    let has = |pat: &str| msgs.iter().any(|m| m.contains(pat));
    assert!(has("0_never: folder ignored: a repeat count of 0"));
    assert!(has(
        "notes: folder ignored: repeat folders are named N_name"
    ));
    assert!(has("deeper: folder not scanned"));
    assert!(has("orphan.txt: caption file without an image"));
    assert!(has("empty.png: empty caption"));
    assert!(has(
        "multi.txt: caption has 2 non-empty lines; only the first is used"
    ));
}

// ---------------------------------------------------------------------------------------------
// Validation split

#[test]
fn validation_split_is_deterministic_and_disjoint() {
    let t = TempDir::new("split");
    for i in 0..20 {
        t.captioned(&format!("2_x/{i:02}.png"), 16, 16, "x");
    }
    let split = |seed: u64| {
        let o = DataOptions {
            validation_split: 0.2,
            seed,
            ..opts(t.path())
        };
        let d = scan_ok(&o);
        let train: HashSet<PathBuf> = d.items.iter().map(|i| i.path.clone()).collect();
        let val: Vec<PathBuf> = d.validation.iter().map(|i| i.path.clone()).collect();
        (train, val)
    };
    let (train, val) = split(1);
    assert_eq!(val.len(), 4);
    assert_eq!(train.len(), 16);
    assert!(val.iter().all(|v| !train.contains(v)));
    let mut sorted = val.clone();
    sorted.sort();
    assert_eq!(val, sorted, "validation items are in path order");
    assert_eq!(split(1), (train.clone(), val.clone()));
    assert_ne!(split(2).1, val, "another seed holds out other images");

    // At least one image held out when the split rounds to zero; a lone image stays in training.
    let o = DataOptions {
        validation_split: 0.01,
        ..opts(t.path())
    };
    assert_eq!(scan_ok(&o).validation.len(), 1);
    let one = TempDir::new("split1");
    one.captioned("a.png", 16, 16, "x");
    let d = scan_ok(&DataOptions {
        validation_split: 0.5,
        ..opts(one.path())
    });
    assert_eq!((d.items.len(), d.validation.len()), (1, 0));
    assert!(matches!(d.warnings[..], [DataWarning::NoValidation { .. }]));
}

// ---------------------------------------------------------------------------------------------
// Buckets: kohya's math, hand-worked

#[test]
fn bucket_resolutions_for_512() {
    // make_bucket_resolutions((512, 512), 256, 1024, 64), worked by hand: max_area = 262144;
    // for w = 256, 320, …, 1024: h = min(1024, ⌊⌊262144 / w⌋ / 64⌋·64).
    let resos = make_bucket_resolutions((512, 512), 256, 1024, 64);
    assert_eq!(
        resos,
        [
            (256, 832),
            (256, 896),
            (256, 960),
            (256, 1024),
            (320, 704),
            (320, 768),
            (384, 640),
            (448, 576),
            (512, 512),
            (576, 448),
            (640, 384),
            (704, 320),
            (768, 320),
            (832, 256),
            (896, 256),
            (960, 256),
            (1024, 256),
        ]
    );
    for (res, min, max, step) in [
        ((512, 512), 256, 1024, 64),
        ((768, 512), 320, 1024, 64),
        ((640, 448), 256, 2048, 32),
        ((1024, 1024), 512, 2048, 64),
        ((512, 768), 256, 1024, 8),
    ] {
        let resos = make_bucket_resolutions(res, min, max, step);
        assert!(!resos.is_empty());
        for (w, h) in resos {
            assert!(w * h <= res.0 * res.1, "{w}x{h} over the area of {res:?}");
            assert!(
                w % step == 0 && h % step == 0,
                "{w}x{h} not a multiple of {step}"
            );
            assert!(w <= max && h <= max);
        }
    }
}

#[test]
fn bucket_selection_hand_worked() {
    let b = Bucketing::Predefined(make_bucket_resolutions((512, 512), 256, 1024, 64));
    // 768x512 (aspect 1.5): 640x384 (1.667, error 0.167) beats 576x448 (1.286, error 0.214).
    // Aspect 1.5 < 1.667, so the width fits: scale 640/768, height round(426.67) = 427,
    // then 43 rows are cropped.
    let c = b.select((768, 512));
    assert_eq!((c.bucket, c.resized), ((640, 384), (640, 427)));
    assert!((c.ar_error - (640.0 / 384.0 - 1.5)).abs() < 1e-12);
    // An exact bucket size is kept as is.
    let c = b.select((448, 576));
    assert_eq!((c.bucket, c.resized), ((448, 576), (448, 576)));
    // 1000x200 (aspect 5): the widest bucket, 1024x256 (4.0); aspect 5 > 4, so the height
    // fits: scale 256/200 gives 1280x256.
    let c = b.select((1000, 200));
    assert_eq!((c.bucket, c.resized), ((1024, 256), (1280, 256)));
    // A square image of another size goes to 512x512, scaled down (or up).
    assert_eq!(b.select((2000, 2000)).resized, (512, 512));
    assert_eq!(b.select((100, 100)).resized, (512, 512));

    // No bucketing: one bucket, the resolution; 768x512 covers it at scale 1.
    let b = Bucketing::Predefined(vec![(512, 512)]);
    let c = b.select((768, 512));
    assert_eq!((c.bucket, c.resized), ((512, 512), (768, 512)));

    // bucket_no_upscale, max_area 512²: 2000x1000 is too large: resized width √(262144·2) =
    // 724.08 → 704 (steps), height from it 352 → 320, aspect 2.2; resized height 362.04 →
    // 320, width from it 640, aspect 2.0: exact, so (640, 320), bucket 640x320.
    let b = Bucketing::NoUpscale {
        max_area: 512 * 512,
        steps: 64,
    };
    let c = b.select((2000, 1000));
    assert_eq!((c.bucket, c.resized), ((640, 320), (640, 320)));
    // Small enough: kept, and the bucket rounds down: 300x200 → 256x192.
    let c = b.select((300, 200));
    assert_eq!((c.bucket, c.resized), ((256, 192), (300, 200)));

    assert_eq!(cover_size((768, 512), (640, 384)), (640, 427));
    assert_eq!(cover_size((100, 300), (256, 512)), (256, 768));
}

#[test]
fn scan_assigns_buckets() {
    let t = TempDir::new("buckets");
    t.captioned("1_x/wide.png", 768, 512, "w");
    t.captioned("1_x/tall.png", 512, 768, "t");
    t.captioned("1_x/square.png", 300, 300, "s");
    let d = scan_ok(&opts(t.path()));
    let buckets: Vec<_> = d.items.iter().map(|i| i.bucket).collect();
    assert_eq!(buckets, [(512, 512), (384, 640), (640, 384)]);
    assert_eq!(d.buckets, [(384, 640), (512, 512), (640, 384)]);
    let o = DataOptions {
        enable_bucket: false,
        ..opts(t.path())
    };
    let d = scan_ok(&o);
    assert!(d.items.iter().all(|i| i.bucket == (512, 512)));
    assert_eq!(d.buckets, [(512, 512)]);
}

// ---------------------------------------------------------------------------------------------
// Pixels

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];

/// Value of channel `c` at (y, x) in a [3, H, W] tensor.
fn at(v: &[f32], h: usize, w: usize, c: usize, y: usize, x: usize) -> f32 {
    v[c * h * w + y * w + x]
}

fn one_item(o: &DataOptions) -> lorafuse::data::Item {
    scan_ok(o).items.remove(0)
}

#[test]
fn pixels_shape_range_and_orientation() {
    let t = TempDir::new("pixels");
    // 64x32, left half red, right half blue, bottom 4 rows green (to check rows).
    t.image("a.png", 64, 32, |x, y| {
        if y >= 28 {
            [0, 255, 0]
        } else if x < 32 {
            RED
        } else {
            BLUE
        }
    });
    t.text("a.txt", "two colours");
    let o = DataOptions {
        resolution: (32, 32),
        enable_bucket: false,
        ..opts(t.path())
    };
    let item = one_item(&o);
    assert_eq!(
        (item.size, item.bucket, item.resized),
        ((64, 32), (32, 32), (64, 32))
    );
    let px = load_pixels(&item, item.bucket, &mut Rng::new(0), &o).unwrap();
    assert_eq!(px.dims(), [3, 32, 32]);
    let v = px.to_f32_vec();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    // Centre crop: source columns 16..48, so output columns 0..16 red, 16..32 blue, exactly
    // (no resampling at scale 1).
    for y in 0..28 {
        for x in 0..32 {
            let want = if x < 16 {
                [1.0, -1.0, -1.0]
            } else {
                [-1.0, -1.0, 1.0]
            };
            for (c, &w) in want.iter().enumerate() {
                assert_eq!(at(&v, 32, 32, c, y, x), w, "c{c} y{y} x{x}");
            }
        }
    }
    for x in 0..32 {
        assert_eq!(at(&v, 32, 32, 1, 31, x), 1.0, "bottom rows are green");
    }

    // flip_aug: about half the draws mirror the image; a mirrored one is blue on the left.
    let flip = DataOptions {
        flip_aug: true,
        ..o.clone()
    };
    let mut rng = Rng::new(3);
    let mut flipped = 0;
    for _ in 0..40 {
        let v = load_pixels(&item, item.bucket, &mut rng, &flip)
            .unwrap()
            .to_f32_vec();
        let left_red = at(&v, 32, 32, 0, 0, 0) == 1.0;
        let right_red = at(&v, 32, 32, 0, 0, 31) == 1.0;
        assert!(left_red != right_red);
        if right_red {
            flipped += 1;
            assert_eq!(at(&v, 32, 32, 2, 0, 0), 1.0);
            for x in 0..32 {
                // A mirror image of the unflipped tensor.
                assert_eq!(at(&v, 32, 32, 0, 5, x), if x < 16 { -1.0 } else { 1.0 });
            }
        }
    }
    assert!((8..=32).contains(&flipped), "{flipped} of 40 flipped");

    // Downscaled (128x64 → 64x32 → crop 32x32) with Lanczos3: colours hold away from the
    // edge between them.
    t.image("a.png", 128, 64, |x, _| if x < 64 { RED } else { BLUE });
    let item = one_item(&o);
    assert_eq!(item.resized, (64, 32));
    let v = load_pixels(&item, item.bucket, &mut Rng::new(0), &o)
        .unwrap()
        .to_f32_vec();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    for y in 0..32 {
        for x in (0..12).chain(20..32) {
            let (r, b) = (at(&v, 32, 32, 0, y, x), at(&v, 32, 32, 2, y, x));
            let (want_r, want_b) = if x < 16 { (1.0, -1.0) } else { (-1.0, 1.0) };
            assert!(
                (r - want_r).abs() < 0.02 && (b - want_b).abs() < 0.02,
                "y{y} x{x}: {r} {b}"
            );
        }
    }
}

#[test]
fn random_crop_moves_and_is_seeded() {
    let t = TempDir::new("rcrop");
    // Each column has its own red value, so the crop offset can be read off column 0.
    t.image("a.png", 64, 32, |x, _| [(x * 4) as u8, 0, 0]);
    t.text("a.txt", "gradient");
    let o = DataOptions {
        resolution: (32, 32),
        enable_bucket: false,
        random_crop: true,
        ..opts(t.path())
    };
    let item = one_item(&o);
    let offsets = |seed: u64| -> Vec<usize> {
        let mut rng = Rng::new(seed);
        (0..30)
            .map(|_| {
                let v = load_pixels(&item, item.bucket, &mut rng, &o)
                    .unwrap()
                    .to_f32_vec();
                (((at(&v, 32, 32, 0, 0, 0) + 1.0) * 127.5).round() as usize) / 4
            })
            .collect()
    };
    let a = offsets(11);
    assert!(a.iter().all(|&o| o <= 32));
    assert!(a.iter().collect::<HashSet<_>>().len() > 5, "{a:?}");
    assert_eq!(a, offsets(11));
    assert_ne!(a, offsets(12));
}

#[test]
fn alpha_gray_and_sixteen_bit() {
    let t = TempDir::new("alpha");
    // Left: transparent black → white. Right: half-transparent red over white → (255, 128, 128).
    let rgba = RgbaImage::from_fn(16, 8, |x, _| {
        if x < 8 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([255, 0, 0, 128])
        }
    });
    rgba.save(t.join("rgba.png")).unwrap();
    t.text("rgba.txt", "alpha");
    let gray: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(16, 8, |x, _| Luma([if x < 8 { 0 } else { 65535 }]));
    gray.save(t.join("z_gray16.png")).unwrap();
    t.text("z_gray16.txt", "gray");
    let o = DataOptions {
        resolution: (16, 8),
        enable_bucket: false,
        ..opts(t.path())
    };
    let d = scan_ok(&o);
    let v = load_pixels(&d.items[0], (16, 8), &mut Rng::new(0), &o)
        .unwrap()
        .to_f32_vec();
    for c in 0..3 {
        assert_eq!(at(&v, 8, 16, c, 3, 2), 1.0, "transparent is white");
    }
    assert_eq!(at(&v, 8, 16, 0, 3, 12), 1.0);
    let g = at(&v, 8, 16, 1, 3, 12);
    assert!((g - (127.0 / 127.5 - 1.0)).abs() < 1e-6, "{g}");
    let v = load_pixels(&d.items[1], (16, 8), &mut Rng::new(0), &o)
        .unwrap()
        .to_f32_vec();
    for c in 0..3 {
        assert_eq!(at(&v, 8, 16, c, 0, 0), -1.0);
        assert_eq!(at(&v, 8, 16, c, 7, 15), 1.0);
    }
}

#[test]
fn exif_orientation_is_applied() {
    let t = TempDir::new("exif");
    // Stored 40x24, top half red, bottom half blue; EXIF 6 = rotate 90° clockwise to view,
    // so it is 24x40 with the stored top (red) on the right.
    let img = RgbImage::from_fn(40, 24, |_, y| Rgb(if y < 12 { RED } else { BLUE }));
    t.bytes("photo.jpg", &jpeg_with_orientation(&img, 6));
    t.text("photo.txt", "rotated");
    let o = DataOptions {
        resolution: (24, 40),
        enable_bucket: false,
        ..opts(t.path())
    };
    let item = one_item(&o);
    assert_eq!(
        (item.size, item.bucket, item.resized),
        ((24, 40), (24, 40), (24, 40))
    );
    let v = load_pixels(&item, item.bucket, &mut Rng::new(0), &o)
        .unwrap()
        .to_f32_vec();
    for y in [2, 20, 37] {
        let (r_left, b_left) = (at(&v, 40, 24, 0, y, 2), at(&v, 40, 24, 2, y, 2));
        let (r_right, b_right) = (at(&v, 40, 24, 0, y, 21), at(&v, 40, 24, 2, y, 21));
        assert!(
            b_left > 0.8 && r_left < -0.8,
            "left should be blue: {r_left} {b_left}"
        );
        assert!(
            r_right > 0.8 && b_right < -0.8,
            "right should be red: {r_right} {b_right}"
        );
    }
}

#[test]
fn changed_file_is_an_error() {
    let t = TempDir::new("changed");
    t.captioned("a.png", 32, 32, "x");
    let o = DataOptions {
        resolution: (32, 32),
        enable_bucket: false,
        ..opts(t.path())
    };
    let item = one_item(&o);
    t.image("a.png", 48, 32, |_, _| [0, 0, 0]);
    let e = load_pixels(&item, item.bucket, &mut Rng::new(0), &o).unwrap_err();
    assert!(
        e.to_string()
            .contains("changed since the data set was scanned"),
        "{e}"
    );
    fs::remove_file(t.join("a.png")).unwrap();
    let e = load_pixels(&item, item.bucket, &mut Rng::new(0), &o).unwrap_err();
    assert!(e.to_string().contains("cannot read file"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Captions

#[test]
fn caption_shuffle_keeps_the_first_tokens() {
    let o = DataOptions {
        shuffle_caption: true,
        keep_tokens: 2,
        ..DataOptions::default()
    };
    let text = "sks person,  red hat, smiling, outdoors,, blue sky, tree ";
    let mut rng = Rng::new(5);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let c = process_caption(text, &o, 1, &mut rng);
        let tags: Vec<&str> = c.split(", ").collect();
        assert_eq!(tags[..2], ["sks person", "red hat"]);
        let mut rest = tags[2..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, ["blue sky", "outdoors", "smiling", "tree"]);
        seen.insert(c);
    }
    assert!(seen.len() > 10, "only {} orders", seen.len());
    // Off: unchanged, no draws.
    let plain = DataOptions::default();
    assert_eq!(process_caption(text, &plain, 1, &mut rng), text);
    // Determinism.
    let a: Vec<String> = (0..5)
        .map(|_| process_caption(text, &o, 1, &mut Rng::new(9)))
        .collect();
    assert!(a.iter().all(|c| c == &a[0]));
}

#[test]
fn caption_dropout_rate_is_respected() {
    let o = DataOptions {
        caption_dropout_rate: 0.3,
        ..DataOptions::default()
    };
    let mut rng = Rng::new(1);
    let n = 20_000;
    let dropped = (0..n)
        .filter(|_| process_caption("a, b", &o, 1, &mut rng).is_empty())
        .count();
    let rate = dropped as f64 / n as f64;
    assert!((rate - 0.3).abs() < 0.015, "{rate}");
    let all = DataOptions {
        caption_dropout_rate: 1.0,
        ..o.clone()
    };
    assert_eq!(process_caption("a", &all, 1, &mut rng), "");
}

/// kohya's order: prefix/suffix first (so a prefix tag is the one keep_tokens keeps), then
/// shuffling with keep_tokens, then tag dropout of the shuffled tags only.
#[test]
fn caption_prefix_suffix_shuffle_and_tag_dropout_in_kohyas_order() {
    let o = DataOptions {
        caption_prefix: Some("sks,".into()),
        caption_suffix: Some(", masterpiece".into()),
        ..DataOptions::default()
    };
    assert_eq!(
        process_caption("a dog, grass", &o, 1, &mut Rng::new(1)),
        "sks, a dog, grass , masterpiece"
    );
    assert_eq!(
        plain_caption("a dog, grass", &o),
        "sks, a dog, grass , masterpiece"
    );
    // Empty prefix/suffix (lora-scripts writes "") are unset.
    let empty = DataOptions {
        caption_prefix: Some(String::new()),
        caption_suffix: Some(String::new()),
        ..DataOptions::default()
    };
    assert_eq!(plain_caption("a, b", &empty), "a, b");

    let o = DataOptions {
        caption_prefix: Some("sks".into()),
        shuffle_caption: true,
        keep_tokens: 1,
        caption_tag_dropout_rate: 0.5,
        ..DataOptions::default()
    };
    let tags = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    let text = format!("{}, {}", "a", tags.join(", "));
    let mut rng = Rng::new(3);
    let (mut kept, n) = (0usize, 4000);
    for _ in 0..n {
        let c = process_caption(&text, &o, 1, &mut rng);
        let got: Vec<&str> = c.split(", ").collect();
        // The prefix joins the first tag: "sks a" is kept in front, never dropped.
        assert_eq!(got[0], "sks a", "{c}");
        assert!(got[1..].iter().all(|t| tags.contains(t)), "{c}");
        kept += got.len() - 1;
    }
    let rate = kept as f64 / (n * tags.len()) as f64;
    assert!((rate - 0.5).abs() < 0.02, "{rate}");
    // Tag dropout alone keeps the order of the tags it keeps.
    let drop_only = DataOptions {
        caption_tag_dropout_rate: 0.5,
        ..DataOptions::default()
    };
    for _ in 0..50 {
        let c = process_caption(&tags.join(", "), &drop_only, 1, &mut rng);
        let idx: Vec<usize> = c
            .split(", ")
            .filter(|t| !t.is_empty())
            .map(|t| tags.iter().position(|x| x == &t).unwrap())
            .collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{c}");
    }
}

/// keep_tokens_separator: the tags before it stay in front, after a second one at the end;
/// secondary_separator joins words into one tag and becomes a comma at the end.
#[test]
fn keep_tokens_separator_and_secondary_separator() {
    let o = DataOptions {
        shuffle_caption: true,
        keep_tokens: 5,
        keep_tokens_separator: Some("|||".into()),
        secondary_separator: Some(";;;".into()),
        ..DataOptions::default()
    };
    let text = "sks, girl ||| red;;;hat, smile, sky, tree ||| best quality, absurdres";
    let mut rng = Rng::new(4);
    let mut orders = HashSet::new();
    for _ in 0..100 {
        let c = process_caption(text, &o, 1, &mut rng);
        let got: Vec<&str> = c.split(", ").collect();
        // "red;;;hat" moved as one tag, then became "red,hat".
        assert_eq!(got.len(), 8, "{c}");
        assert_eq!(got[..2], ["sks", "girl"], "{c}");
        assert_eq!(got[6..], ["best quality", "absurdres"], "{c}");
        let mut middle = got[2..6].to_vec();
        middle.sort_unstable();
        assert_eq!(middle, ["red,hat", "sky", "smile", "tree"], "{c}");
        orders.insert(c);
    }
    assert!(orders.len() > 5);
    // Without the separator in a caption, keep_tokens applies.
    let c = process_caption("a, b, c, d, e, f, g", &o, 1, &mut rng);
    assert!(c.starts_with("a, b, c, d, e, "), "{c}");
    // Without shuffling or tag dropout, kohya leaves the caption as written (the
    // secondary separator still becomes a comma).
    let still = DataOptions {
        shuffle_caption: false,
        ..o.clone()
    };
    assert_eq!(
        process_caption(text, &still, 1, &mut rng),
        "sks, girl ||| red,hat, smile, sky, tree ||| best quality, absurdres"
    );
}

/// caption_dropout_every_n_epochs counts epochs from 1, as kohya's set_current_epoch.
#[test]
fn caption_dropout_every_n_epochs() {
    let o = DataOptions {
        caption_dropout_every_n_epochs: 3,
        ..DataOptions::default()
    };
    let mut rng = Rng::new(0);
    let dropped: Vec<u64> = (1..=9)
        .filter(|&e| process_caption("a, b", &o, e, &mut rng).is_empty())
        .collect();
    assert_eq!(dropped, [3, 6, 9]);
}

/// enable_wildcard: `{a|b}` picks a choice, `{{`/`}}` are braces, a caption file of several
/// lines gives one line at random; without it the first line (and one warning).
#[test]
fn wildcards_and_multi_line_captions() {
    let o = DataOptions {
        enable_wildcard: true,
        ..DataOptions::default()
    };
    let mut rng = Rng::new(2);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let c = process_caption("a {red|blue|green} {{hat}} {x}", &o, 1, &mut rng);
        seen.insert(c);
    }
    let want: HashSet<String> = ["red", "blue", "green"]
        .iter()
        .map(|c| format!("a {c} {{hat}} x"))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(plain_caption("a {red|blue} hat", &o), "a red hat");

    let t = TempDir::new("wildcard");
    t.image("1_x/a.png", 64, 64, |_, _| [1, 2, 3]);
    t.text(
        "1_x/a.txt",
        "first line

  second line  
third
",
    );
    let d = scan_ok(&DataOptions {
        enable_wildcard: true,
        ..opts(t.path())
    });
    assert_eq!(d.items[0].caption, "first line\nsecond line\nthird");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let lines: HashSet<String> = (0..100)
        .map(|_| process_caption(&d.items[0].caption, &o, 1, &mut rng))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let d = scan_ok(&opts(t.path()));
    assert_eq!(d.items[0].caption, "first line");
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
}

/// kohya's fine-tuning metadata (merge_captions_to_metadata's JSON, keys without extension,
/// or JSONL): the images it lists, captioned "caption,tags"; a key without an image is named
/// with its line.
#[test]
fn metadata_file_lists_images_captioned_as_sd_scripts_joins_them() {
    let t = TempDir::new("finetune");
    t.image("img/a.png", 64, 64, |_, _| [1, 1, 1]);
    t.image("img/b.jpg", 64, 64, |_, _| [2, 2, 2]);
    t.image("img/c.webp", 64, 64, |_, _| [3, 3, 3]);
    t.image("img/unlisted.png", 64, 64, |_, _| [4, 4, 4]);
    let md = t.text(
        "meta_cap.json",
        "{\n  \"a\": {\"caption\": \"a dog\", \"tags\": \"grass, sky\"},\n  \"b.jpg\": {\"tags\": \"cat\"},\n  \"c\": {\"caption\": \"a bird\"}\n}\n",
    );
    let o = DataOptions {
        metadata_file: Some(md.clone()),
        num_repeats: 2,
        ..opts(&t.join("img"))
    };
    let d = scan_ok(&o);
    let got: Vec<(String, String, usize)> = d
        .items
        .iter()
        .map(|i| {
            let name = i.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, i.caption.clone(), i.repeats)
        })
        .collect();
    let row = |n: &str, c: &str| (n.to_string(), c.to_string(), 2);
    assert_eq!(
        got,
        [
            row("a.png", "a dog,grass, sky"),
            row("b.jpg", "cat"),
            row("c.webp", "a bird")
        ]
    );
    assert!(matches!(
        &d.items[0].caption_source,
        CaptionSource::Metadata { path, line: 2 } if *path == md
    ));
    // JSONL, with a key whose image is missing: named with its line.
    let md = t.text(
        "meta.jsonl",
        "{\"image_path\": \"a.png\", \"caption\": \"x\"}\n{\"image_path\": \"gone\", \"caption\": \"y\"}\n",
    );
    let e = scan_err(&DataOptions {
        metadata_file: Some(md.clone()),
        ..opts(&t.join("img"))
    });
    let text = e.to_string();
    assert!(
        text.contains("meta.jsonl, line 2: image \"gone\": no such image"),
        "{text}"
    );
    // A missing metadata file is an error naming it.
    let e = scan_err(&DataOptions {
        metadata_file: Some(t.join("nope.json")),
        ..opts(&t.join("img"))
    });
    assert!(e.to_string().contains("nope.json"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Batches

fn bucketed_dataset(t: &TempDir) -> Dataset {
    // Buckets for 64x64, steps 32, 32..128: 32x96, 32x128, 64x64, 96x32, 128x32. Aspect 3.2
    // goes to 96x32 (error 0.2), 0.3125 to 32x96, squares to 64x64.
    t.captioned("3_a/w1.png", 128, 40, "w");
    t.captioned("3_a/w2.png", 128, 40, "w");
    t.captioned("2_b/t1.png", 40, 128, "t");
    t.captioned("2_b/s1.png", 64, 64, "s");
    t.captioned("2_b/s2.png", 80, 80, "s");
    t.captioned("s3.png", 64, 64, "s");
    let o = DataOptions {
        resolution: (64, 64),
        min_bucket_reso: 32,
        max_bucket_reso: 128,
        bucket_reso_steps: 32,
        ..opts(t.path())
    };
    scan_ok(&o)
}

#[test]
fn batches_never_mix_buckets_and_cover_every_repeat() {
    let t = TempDir::new("batches");
    let mut d = bucketed_dataset(&t);
    assert_eq!(d.buckets.len(), 3, "{:?}", d.buckets);
    for bs in [1, 2, 3, 4, 7, 100] {
        // The folder's own batch size decides; the argument is for a data set without one.
        d.sources[0].opts.batch_size = bs;
        let batches = epoch_batches(&d, bs, &mut Rng::new(bs as u64));
        assert_eq!(batches.len(), d.batches_per_epoch(bs), "bs {bs}");
        let mut count = vec![0; d.items.len()];
        for b in &batches {
            assert!(!b.is_empty() && b.len() <= bs);
            let bucket = d.items[b[0]].bucket;
            assert!(
                b.iter().all(|&i| d.items[i].bucket == bucket),
                "mixed batch {b:?}"
            );
            for &i in b {
                count[i] += 1;
            }
        }
        let repeats: Vec<usize> = d.items.iter().map(|i| i.repeats).collect();
        assert_eq!(count, repeats, "bs {bs}");
        // At most one partial batch per bucket.
        let partial = batches.iter().filter(|b| b.len() < bs).count();
        assert!(partial <= d.buckets.len());
    }
    d.sources[0].opts.batch_size = 0;
    assert_eq!(
        epoch_batches(&d, 5, &mut Rng::new(0)).len(),
        d.samples_per_epoch()
    );
}

#[test]
fn batches_are_deterministic_by_seed() {
    let t = TempDir::new("batchseed");
    let d = bucketed_dataset(&t);
    let a = epoch_batches(&d, 2, &mut Rng::new(42));
    assert_eq!(a, epoch_batches(&d, 2, &mut Rng::new(42)));
    assert_ne!(a, epoch_batches(&d, 2, &mut Rng::new(43)));
    // Consecutive epochs from one stream differ.
    let mut rng = Rng::new(42);
    let e1 = epoch_batches(&d, 2, &mut rng);
    let e2 = epoch_batches(&d, 2, &mut rng);
    assert_ne!(e1, e2);
}

#[test]
fn validation_batches_group_by_bucket() {
    let t = TempDir::new("valbatches");
    bucketed_dataset(&t);
    let o = DataOptions {
        resolution: (64, 64),
        min_bucket_reso: 32,
        max_bucket_reso: 128,
        bucket_reso_steps: 32,
        validation_split: 0.5,
        ..opts(t.path())
    };
    let d = scan_ok(&o);
    assert_eq!(d.validation.len(), 3);
    let batches = validation_batches(&d, 2);
    let mut all: Vec<usize> = batches.concat();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2]);
    for b in &batches {
        assert!(b
            .iter()
            .all(|&i| d.validation[i].bucket == d.validation[b[0]].bucket));
    }
    assert_eq!(batches, validation_batches(&d, 2));
}

// ---------------------------------------------------------------------------------------------
// Content keys

#[test]
fn xxh64_matches_the_reference() {
    // Values from the reference implementation (python-xxhash 3.x).
    let long: Vec<u8> = (0..=255u8).cycle().take(768).collect();
    let abc = b"0123456789abcdefghijklmnopqrstuvwxyz";
    for (data, seed, want) in [
        (&b""[..], 0, 0xef46db3751d8e999u64),
        (&b"a"[..], 0, 0xd24ec4f1a98c6e5b),
        (&b"abc"[..], 0, 0x44bc2cf5ad770999),
        (&long, 0, 0x8e03c838c596036f),
        (&abc[..31], 0, 0x80adfc1d42020f39),
        (&abc[..32], 0, 0xbf7c9dbe16b5c6e2),
        (&abc[..], 0, 0x69196c1b3af0bff9),
        (&b""[..], 12345, 0x95584af7701f808d),
        (&b"abc"[..], 12345, 0x1700e64f6f23509),
        (&long, 12345, 0x6ecac135863f12b2),
        (&abc[..], 12345, 0x50fdedcf288068),
    ] {
        assert_eq!(xxh64(data, seed), want, "len {} seed {seed}", data.len());
    }
}

#[test]
fn content_hash_follows_bytes_bucket_and_crop() {
    let t = TempDir::new("hash");
    let png = png_bytes(64, 64);
    t.bytes("1_x/a.png", &png);
    t.bytes("1_x/b.png", &png);
    t.bytes("1_x/c.png", &png_bytes(64, 63));
    for n in ["a", "b", "c"] {
        t.text(&format!("1_x/{n}.txt"), n);
    }
    let o = opts(t.path());
    let d = scan_ok(&o);
    let h: Vec<u64> = d.items.iter().map(|i| i.content_hash()).collect();
    assert_eq!(h[0], h[1], "same bytes, same bucket");
    assert_ne!(h[0], h[2]);
    assert_eq!(d.items[0].file_hash(), xxh64(&png, 0));
    let again = scan_ok(&o);
    assert_eq!(again.items[0].content_hash(), h[0], "stable across scans");
    let rc = scan_ok(&DataOptions {
        random_crop: true,
        ..o.clone()
    });
    assert_ne!(rc.items[0].content_hash(), h[0]);
    let other = scan_ok(&DataOptions {
        resolution: (256, 256),
        min_bucket_reso: 128,
        ..o.clone()
    });
    assert_ne!(other.items[0].content_hash(), h[0], "another bucket size");
}

// ---------------------------------------------------------------------------------------------
// Robustness: damaged files are errors, never panics

#[test]
fn damaged_files_are_errors_not_panics() {
    let t = TempDir::new("fuzz");
    let mut rng = Rng::new(2024);
    let sources: Vec<(&str, Vec<u8>)> = ["png", "jpg", "webp", "bmp"]
        .into_iter()
        .map(|ext| {
            let p = t.image(&format!("src.{ext}"), 40, 24, |x, y| {
                [(x * 6) as u8, (y * 9) as u8, 77]
            });
            let bytes = fs::read(&p).unwrap();
            fs::remove_file(p).unwrap();
            (ext, bytes)
        })
        .collect();
    let mut n = 0;
    for (ext, good) in &sources {
        for k in 0..24 {
            let mut b = good.clone();
            match k % 3 {
                0 => b.truncate(rng.below(b.len() as u64) as usize),
                1 => {
                    for _ in 0..1 + k {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] = rng.next_u64() as u8;
                    }
                }
                _ => b = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect(),
            }
            t.bytes(&format!("1_x/f{n:03}.{ext}"), &b);
            t.text(&format!("1_x/f{n:03}.txt"), "x");
            n += 1;
        }
    }
    let o = DataOptions {
        resolution: (32, 32),
        enable_bucket: false,
        ..opts(t.path())
    };
    // Some damaged files still decode (a flipped byte in pixel data); the rest must be errors
    // naming their file.
    match scan(&o) {
        Ok(d) => {
            for it in &d.items {
                let _ = load_pixels(it, it.bucket, &mut Rng::new(0), &o);
            }
        }
        Err(e) => {
            for p in e.problems() {
                let msg = p.to_string();
                assert!(msg.contains("/1_x/f"), "{msg}");
            }
        }
    }
    // Random bytes as metadata files.
    let m = TempDir::new("fuzzmeta");
    m.image("1_a/x.png", 16, 16, |_, _| [0, 0, 0]);
    m.image("1_b/x.png", 16, 16, |_, _| [0, 0, 0]);
    let junk: Vec<u8> = (0..400).map(|_| rng.next_u64() as u8).collect();
    m.bytes("1_a/metadata.csv", &junk);
    m.bytes("1_b/metadata.jsonl", &junk);
    let e = scan_err(&opts(m.path()));
    assert!(e.problems().len() >= 2, "{e}");
}

// ---------------------------------------------------------------------------------------------
// Regularisation images and several datasets

/// Regularisation images with these repeats, balanced against `train` training samples:
/// the repeats of those used.
fn balanced(repeats: &[usize], train: usize) -> Vec<usize> {
    let reg = repeats
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let mut item = Item::synthetic(i, (64, 64));
            item.repeats = r;
            item.is_reg = true;
            item
        })
        .collect();
    balance_reg(reg, train).iter().map(|i| i.repeats).collect()
}

/// sd-scripts' DreamBoothDataset loop, worked by hand: images in order with their repeats
/// until the training samples are matched (the rest unused), else one more repeat each in
/// turn.
#[test]
fn reg_images_are_balanced_against_the_training_samples_as_sd_scripts_does() {
    assert_eq!(balanced(&[1, 1, 1, 1], 6), [2, 2, 1, 1]);
    assert_eq!(balanced(&[1, 1], 7), [4, 3]);
    assert_eq!(balanced(&[2, 2, 2], 3), [2, 2]);
    assert_eq!(balanced(&[5, 1], 3), [5]);
    assert_eq!(balanced(&[1, 2, 1], 4), [1, 2, 1]);
    assert_eq!(balanced(&[3], 10), [10]);
    assert_eq!(balanced(&[1, 1], 0), Vec::<usize>::new());
}

fn source(dir: PathBuf, is_reg: bool, dataset: usize, batch_size: usize) -> Source {
    Source {
        opts: DataOptions {
            batch_size,
            ..opts(&dir)
        },
        is_reg,
        dataset,
    }
}

#[test]
fn train_and_reg_subsets_give_the_sample_list_and_loss_weights() {
    let t = TempDir::new("reg");
    t.captioned("train/3_sks dog/a.png", 64, 64, "sks dog a");
    t.captioned("train/3_sks dog/b.png", 64, 64, "sks dog b");
    // Class-token captions, as kohya's reg folders usually are.
    for name in ["r1", "r2", "r3", "r4", "r5"] {
        t.image(&format!("reg/1_dog/{name}.png"), 64, 64, |_, _| [9, 9, 9]);
    }
    t.captioned("other/c.png", 128, 64, "other c");
    let sources = [
        source(t.join("train"), false, 0, 2),
        source(t.join("reg"), true, 0, 2),
        source(t.join("other"), false, 1, 3),
    ];
    let d = scan_sources(&sources).unwrap();
    let got: Vec<(String, String, usize, usize, bool)> = d
        .items
        .iter()
        .map(|i| {
            let rel = i.path.strip_prefix(t.path()).unwrap();
            (
                rel.display().to_string(),
                i.caption.clone(),
                i.repeats,
                i.dataset,
                i.is_reg,
            )
        })
        .collect();
    let row =
        |p: &str, c: &str, r: usize, d: usize, reg: bool| (p.to_string(), c.to_string(), r, d, reg);
    // 6 training samples in dataset 0: r1..r5 once each, then r1 once more; dataset 1 has
    // no regularisation images.
    assert_eq!(
        got,
        [
            row("train/3_sks dog/a.png", "sks dog a", 3, 0, false),
            row("train/3_sks dog/b.png", "sks dog b", 3, 0, false),
            row("other/c.png", "other c", 1, 1, false),
            row("reg/1_dog/r1.png", "dog", 2, 0, true),
            row("reg/1_dog/r2.png", "dog", 1, 0, true),
            row("reg/1_dog/r3.png", "dog", 1, 0, true),
            row("reg/1_dog/r4.png", "dog", 1, 0, true),
            row("reg/1_dog/r5.png", "dog", 1, 0, true),
        ]
    );
    assert_eq!(d.num_reg_images, 5);
    assert_eq!(
        (d.train_samples_per_epoch(), d.samples_per_epoch()),
        (7, 13)
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // The loss weights: prior_loss_weight for the regularisation images.
    assert_eq!(
        d.loss_weights(&[0, 3, 4], 0.25),
        Some(vec![1.0, 0.25, 0.25])
    );
    assert_eq!(d.loss_weights(&[0, 3], 1.0), None);
    assert_eq!(d.loss_weights(&[0, 1], 0.25), None);
    // Batches: dataset 0 in twos (12 samples), dataset 1 in threes (1 sample); none mixes
    // datasets; every sample once.
    assert_eq!(d.batches_per_epoch(1), 6 + 1);
    let batches = epoch_batches(&d, 1, &mut Rng::new(5));
    assert_eq!(batches.len(), 7);
    let mut count = vec![0; d.items.len()];
    for b in &batches {
        let ds = d.items[b[0]].dataset;
        assert!(b.iter().all(|&i| d.items[i].dataset == ds), "{b:?}");
        assert!(b.len() <= [2, 3][ds]);
        for &i in b {
            count[i] += 1;
        }
    }
    assert_eq!(count, d.items.iter().map(|i| i.repeats).collect::<Vec<_>>());

    // More regularisation samples than training samples: the rest are named as unused.
    let sources = [
        source(t.join("other"), false, 0, 1),
        source(t.join("reg"), true, 0, 1),
    ];
    let d = scan_sources(&sources).unwrap();
    assert_eq!(d.items.len(), 2);
    assert_eq!(
        d.warnings,
        [DataWarning::RegImagesUnused {
            dataset: 0,
            train: 1,
            reg: 5,
            unused: 4
        }]
    );
}

#[test]
fn a_reg_folder_without_images_and_every_sources_problem_are_named() {
    let t = TempDir::new("reg-empty");
    t.captioned("train/1_a/a.png", 64, 64, "a");
    fs::create_dir_all(t.join("reg/1_dog")).unwrap();
    let sources = [
        source(t.join("train"), false, 0, 1),
        source(t.join("reg"), true, 0, 1),
        source(t.join("missing"), false, 0, 1),
    ];
    let e = scan_sources(&sources).unwrap_err();
    let problems = e.problems();
    assert_eq!(problems.len(), 2, "{e}");
    assert!(
        matches!(problems[0], DataError::Empty { path, .. } if *path == t.join("reg")),
        "{e}"
    );
    assert!(
        matches!(problems[1], DataError::FolderMissing { path } if *path == t.join("missing")),
        "{e}"
    );
}

/// Regularisation images are never held out for validation (sd-scripts does not split them).
#[test]
fn reg_images_are_not_split_for_validation() {
    let t = TempDir::new("reg-split");
    for name in ["a", "b", "c", "d"] {
        t.captioned(&format!("train/1_x/{name}.png"), 64, 64, name);
        t.captioned(&format!("reg/1_y/{name}.png"), 64, 64, name);
    }
    let mut train = source(t.join("train"), false, 0, 1);
    train.opts.validation_split = 0.5;
    let mut reg = source(t.join("reg"), true, 0, 1);
    reg.opts.validation_split = 0.5;
    let d = scan_sources(&[train, reg]).unwrap();
    assert_eq!(d.validation.len(), 2);
    assert!(d.validation.iter().all(|i| !i.is_reg));
    // 2 training samples: the first two regularisation images.
    assert_eq!(d.items.iter().filter(|i| i.is_reg).count(), 2);
}
