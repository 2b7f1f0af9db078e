//! Monitoring outputs: TensorBoard event files (CRC32C test vectors, TFRecord framing, the
//! Event protobuf decoded by a reader written here from the .proto definitions; scalars and
//! image summaries, the sample images of a training run among them) and the loss-curve PNG.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lorafuse::config::{SamplePrompts, TrainConfig};
use lorafuse::monitor::plot::{loss_curve_png, loss_curve_png_sized, HEIGHT, WIDTH};
use lorafuse::monitor::tensorboard::{crc32c, masked_crc32c, EncodedImage, EventWriter};
use lorafuse::sample::{encode_png, RgbImage, SamplerKind};
use lorafuse::train::trainer::{train, Event, Recorder};
use lorafuse::CpuBackend;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-monitor-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn crc32c_test_vectors() {
    // The check value, and RFC 3720 (iSCSI) appendix B.4.
    assert_eq!(crc32c(b""), 0);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let up: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&up), 0x46DD_794E);
    let down: Vec<u8> = (0..32).rev().collect();
    assert_eq!(crc32c(&down), 0x113F_DB5C);
    // TFRecord's mask, ((c >> 15) | (c << 17)) + 0xa282ead8, computed in Python.
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
}

// ---------------------------------------------------------------------------------------------
// A minimal protobuf reader for the three messages.

#[derive(Debug, PartialEq)]
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn read_varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = buf[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

fn fields(buf: &[u8]) -> Vec<(u64, Field)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        let key = read_varint(buf, &mut at);
        let f = match key & 7 {
            0 => Field::Varint(read_varint(buf, &mut at)),
            1 => {
                at += 8;
                Field::Fixed64(buf[at - 8..at].try_into().unwrap())
            }
            2 => {
                let n = read_varint(buf, &mut at) as usize;
                at += n;
                Field::Bytes(buf[at - n..at].to_vec())
            }
            5 => {
                at += 4;
                Field::Fixed32(buf[at - 4..at].try_into().unwrap())
            }
            t => panic!("wire type {t}"),
        };
        out.push((key >> 3, f));
    }
    out
}

/// Splits a file into TFRecords, checking both CRCs of each.
fn records(file: &[u8]) -> Vec<Vec<u8>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < file.len() {
        let len_bytes = &file[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            len_crc,
            masked_crc32c(len_bytes),
            "length CRC of record {}",
            out.len()
        );
        let data = &file[at + 12..at + 12 + len];
        let data_crc = u32::from_le_bytes(file[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(
            data_crc,
            masked_crc32c(data),
            "data CRC of record {}",
            out.len()
        );
        out.push(data.to_vec());
        at += 16 + len;
    }
    assert_eq!(at, file.len());
    out
}

/// (wall_time, step, tag, simple_value) of a scalar Event.
fn scalar(event: &[u8]) -> (f64, i64, String, f32) {
    let mut wall_time = 0.0;
    let mut step = 0;
    let mut tag = String::new();
    let mut value = f32::NAN;
    for (n, f) in fields(event) {
        match (n, f) {
            (1, Field::Fixed64(b)) => wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Bytes(summary)) => {
                let summary = fields(&summary);
                assert_eq!(summary.len(), 1);
                let (1, Field::Bytes(v)) = &summary[0] else {
                    panic!("Summary.value expected: {summary:?}");
                };
                for (n, f) in fields(v) {
                    match (n, f) {
                        (1, Field::Bytes(t)) => tag = String::from_utf8(t).unwrap(),
                        (2, Field::Fixed32(b)) => value = f32::from_le_bytes(b),
                        other => panic!("unexpected Summary.Value field {other:?}"),
                    }
                }
            }
            other => panic!("unexpected Event field {other:?}"),
        }
    }
    (wall_time, step, tag, value)
}

#[test]
fn event_file_records_decode() {
    let dir = TempDir::new("events");
    let logdir = dir.0.join("logs").join("run1");
    let mut w = EventWriter::create(&logdir).unwrap();
    let path = w.path().to_path_buf();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(
        name.ends_with(&format!(".{}.lorafuse", std::process::id())),
        "{name}"
    );

    let written = [
        ("loss/train", 0u64, 0.25f32, 1_700_000_000.5f64),
        ("loss/train", 1, 0.125, 1_700_000_001.0),
        ("lr", 300, 1e-4, 1_700_000_002.0),
        ("loss/validation", 1u64 << 40, -3.5, 1_700_000_003.25),
    ];
    for (tag, step, value, t) in written {
        w.add_scalar(tag, step, value, t).unwrap();
    }
    w.flush().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let recs = records(&bytes);
    assert_eq!(recs.len(), 1 + written.len());
    // First the file version.
    let first = fields(&recs[0]);
    assert!(matches!(first[0], (1, Field::Fixed64(_))));
    assert_eq!(first[1], (3, Field::Bytes(b"brain.Event:2".to_vec())));
    for (rec, (tag, step, value, t)) in recs[1..].iter().zip(written) {
        assert_eq!(scalar(rec), (t, step as i64, tag.to_string(), value));
    }

    // A second writer in the same folder never overwrites the first file.
    let w2 = EventWriter::create(&logdir).unwrap();
    assert_ne!(w2.path(), path.as_path());
    drop(w2);
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(std::fs::read_dir(&logdir).unwrap().count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Image summaries

/// An image Event: (step, tag, (height, width, colorspace, encoded bytes), description).
type ImageSummary = (i64, String, (u64, u64, u64, Vec<u8>), String);

fn image_summary(event: &[u8]) -> ImageSummary {
    let mut step = 0;
    let mut tag = String::new();
    let mut image = None;
    let mut description = String::new();
    for (n, f) in fields(event) {
        match (n, f) {
            (1, Field::Fixed64(_)) => {}
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Bytes(summary)) => {
                let summary = fields(&summary);
                assert_eq!(summary.len(), 1);
                let (1, Field::Bytes(v)) = &summary[0] else {
                    panic!("Summary.value expected: {summary:?}");
                };
                for (n, f) in fields(v) {
                    match (n, f) {
                        (1, Field::Bytes(t)) => tag = String::from_utf8(t).unwrap(),
                        (4, Field::Bytes(img)) => {
                            let (mut h, mut w, mut c, mut png) = (0, 0, 0, Vec::new());
                            for (n, f) in fields(&img) {
                                match (n, f) {
                                    (1, Field::Varint(v)) => h = v,
                                    (2, Field::Varint(v)) => w = v,
                                    (3, Field::Varint(v)) => c = v,
                                    (4, Field::Bytes(b)) => png = b,
                                    other => panic!("unexpected Summary.Image field {other:?}"),
                                }
                            }
                            image = Some((h, w, c, png));
                        }
                        (9, Field::Bytes(meta)) => {
                            for (n, f) in fields(&meta) {
                                match (n, f) {
                                    (3, Field::Bytes(d)) => {
                                        description = String::from_utf8(d).unwrap()
                                    }
                                    other => panic!("unexpected SummaryMetadata field {other:?}"),
                                }
                            }
                        }
                        other => panic!("unexpected Summary.Value field {other:?}"),
                    }
                }
            }
            other => panic!("unexpected Event field {other:?}"),
        }
    }
    (step, tag, image.expect("no Summary.Image"), description)
}

/// The Event's summary value holds an image.
fn is_image(event: &[u8]) -> bool {
    fields(event).iter().any(|(n, f)| match (n, f) {
        (5, Field::Bytes(summary)) => fields(summary).iter().any(|(_, v)| match v {
            Field::Bytes(v) => fields(v).iter().any(|(n, _)| *n == 4),
            _ => false,
        }),
        _ => false,
    })
}

fn decode_png(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

#[test]
fn image_summaries_decode() {
    let dir = TempDir::new("images");
    let mut w = EventWriter::create(&dir.0).unwrap();
    let (width, height) = (5u32, 3u32);
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i * 29 % 256) as u8)
        .collect();
    let img = RgbImage {
        width: width as usize,
        height: height as usize,
        data: pixels.clone(),
    };
    let png = encode_png(Path::new("x.png"), &img).unwrap();
    let encoded = EncodedImage {
        png: &png,
        width,
        height,
    };
    w.add_scalar("loss/train", 7, 0.5, 1.0).unwrap();
    w.add_image("samples/00", 7, &encoded, "a red circle --w 64", 2.0)
        .unwrap();
    w.add_image("samples/01", 1 << 33, &encoded, "", 3.0)
        .unwrap();
    w.flush().unwrap();

    let recs = records(&std::fs::read(w.path()).unwrap());
    assert_eq!(recs.len(), 4);
    assert_eq!(scalar(&recs[1]).2, "loss/train");
    let (step, tag, (h, wd, colorspace, bytes), description) = image_summary(&recs[2]);
    assert_eq!((step, tag.as_str()), (7, "samples/00"));
    assert_eq!((h, wd, colorspace), (3, 5, 3), "height, width, RGB");
    assert_eq!(description, "a red circle --w 64");
    assert_eq!(bytes, png);
    let decoded = decode_png(&bytes);
    assert_eq!(decoded.dimensions(), (width, height));
    assert_eq!(decoded.into_raw(), pixels);
    // No description: no metadata.
    let (step, tag, _, description) = image_summary(&recs[3]);
    assert_eq!(
        (step, tag.as_str(), description.as_str()),
        (1 << 33, "samples/01", "")
    );
}

/// The event file in `logdir` (one run, one file).
fn event_file(logdir: &Path) -> Vec<u8> {
    let files: Vec<PathBuf> = std::fs::read_dir(logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read(&files[0]).unwrap()
}

#[test]
fn training_writes_sample_images_and_their_summaries() {
    let dir = TempDir::new("train");
    lorafuse::demo::prepare(&dir.0, 26).unwrap();
    // The demo's epoch is 23 steps; 26 steps end inside epoch 2.
    // sample_every_n_epochs makes sample_every_n_steps unused, as in kohya.
    let sets = [
        "sample_every_n_steps=1",
        "sample_every_n_epochs=1",
        "sample_at_first=true",
        "sample_sampler=k_euler_a",
        "save_precision=fp32",
    ]
    .map(String::from);
    let cfg = TrainConfig::load(dir.0.join("demo.yaml"), &sets).unwrap();
    assert_eq!(cfg.sample_sampler, SamplerKind::EulerAncestral);
    let mut rec = Recorder::default();
    train(
        &cfg,
        &CpuBackend::new(),
        false,
        &AtomicBool::new(false),
        &mut rec,
    )
    .unwrap();
    let per_epoch = rec
        .0
        .iter()
        .find_map(|e| match e {
            Event::Started {
                steps_per_epoch, ..
            } => Some(*steps_per_epoch),
            _ => None,
        })
        .unwrap();
    assert_eq!(per_epoch, 23);

    // kohya's names: e000000 before the first step, then each epoch's end, the partial last
    // epoch included; no step samples.
    let samples = cfg.output_dir.join("samples");
    let mut names: Vec<String> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want = ["e000000", "e000001", "e000002"].map(|l| format!("demo-shapes_{l}_00.png"));
    assert_eq!(names, want);
    let saved: Vec<&PathBuf> = rec
        .0
        .iter()
        .filter_map(|e| match e {
            Event::Saved {
                what: "sample",
                path,
            } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 3);

    // The same PNGs in the event file, at the optimizer steps they were made at.
    let events: Vec<ImageSummary> = records(&event_file(&cfg.logging_dir))
        .iter()
        .skip(1)
        .filter(|r| is_image(r))
        .map(|r| image_summary(r))
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.0, e.1.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "samples/00"), (23, "samples/00"), (26, "samples/00")]
    );
    let SamplePrompts::List(prompts) = &cfg.sample_prompts else {
        panic!("the demo lists its prompts")
    };
    for (event, name) in events.iter().zip(&want) {
        let (_, _, (h, w, colorspace, png), description) = event;
        assert_eq!((*h, *w, *colorspace), (64, 64, 3));
        assert_eq!(description, &prompts[0]);
        assert_eq!(png, &std::fs::read(samples.join(name)).unwrap());
        assert_eq!(decode_png(png).dimensions(), (64, 64));
    }
    // Training changed the adapters between the first and the last sample.
    assert_ne!(events[0].2 .3, events[2].2 .3);
}

// ---------------------------------------------------------------------------------------------
// The loss plot

#[test]
fn loss_curve_is_a_png_of_the_right_size() {
    let dir = TempDir::new("plot");
    let train: Vec<(u64, f64)> = (0..500u64)
        .map(|s| {
            let noise = ((s * 7919) % 101) as f64 / 101.0 - 0.5;
            (s, 0.3 * (-(s as f64) / 150.0).exp() + 0.08 + 0.05 * noise)
        })
        .collect();
    let validation: Vec<(u64, f64)> = (0..5u64)
        .map(|i| (i * 100 + 99, 0.25 - 0.03 * i as f64))
        .collect();
    let p = dir.0.join("loss.png");
    loss_curve_png(&p, &train, &validation).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
    assert_eq!(img.get_pixel(0, HEIGHT - 1).0, [255, 255, 255]);
    let count = |want: [u8; 3]| img.pixels().filter(|p| p.0 == want).count();
    // The smoothed curve's blue and the validation orange are both there.
    assert!(
        count([31, 119, 180]) > 200,
        "blue {}",
        count([31, 119, 180])
    );
    assert!(
        count([230, 110, 10]) > 20,
        "orange {}",
        count([230, 110, 10])
    );

    // Other sizes, and empty or broken data, still make a valid image.
    let q = dir.0.join("empty.png");
    loss_curve_png_sized(&q, 320, 200, &[], &[(3, f64::NAN)]).unwrap();
    let img = image::open(&q).unwrap();
    assert_eq!((img.width(), img.height()), (320, 200));
    let e = loss_curve_png_sized(&q, 10, 10, &train, &[]).unwrap_err();
    assert!(e.to_string().contains("10x10"), "{e}");
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["empty.png".to_string(), "loss.png".to_string()]);
}
