//! `lorafuse caption --tagger`: the WD14 v3 ViT tagger against the reference (timm, Pillow,
//! torchvision on the CPU; tests/fixtures/make_tagger_fixture.py) on two tiny random ViTs in
//! the tagger's own folder layout: the model's input tensor (alpha over white, pad to square,
//! PIL bicubic resize, BGR) and the logits and probabilities; then the command on a folder
//! (captions, --append, --overwrite, a corrupt picture skipped) and bad tagger files and
//! options (exit 2 naming them).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use common::tools::{assert_bad_input, TempDir};
use lorafuse::caption::{ClipModel, Interrogator, Tagger, Vocabulary};
use lorafuse::data::pixels::decode_image;
use lorafuse::model::checkpoint::Weights;
use lorafuse::CpuBackend;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tagger")
}

const MODELS: [&str; 2] = ["vit-v3", "vit-cls"];
const IMAGES: [&str; 2] = ["wide-alpha", "small"];

fn reference(name: &str) -> Vec<f32> {
    let r = Weights::open(fixtures().join("reference.safetensors")).unwrap();
    let shape = r.shape(name).unwrap().to_vec();
    r.get(name, shape).unwrap().to_f32_vec()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    diff / scale
}

#[test]
fn tagger_matches_timm_and_pillow() {
    let be = CpuBackend::new();
    for model in MODELS {
        let tagger = Tagger::load(&fixtures().join(model), &be).unwrap();
        for image in IMAGES {
            let path = fixtures().join(format!("images/{image}.png"));
            let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
            let key = format!("{model}/{image}");
            let pixels = tagger.preprocess.pixels(&img);
            let want = reference(&format!("{key}/pixels"));
            // Byte-exact resampling makes the tensor equal, not merely close.
            assert_eq!(pixels, want, "{key}: input tensor");
            let logits = tagger.vit.logits(&be, &pixels).unwrap();
            let e = rel_err(&logits, &reference(&format!("{key}/logits")));
            assert!(e < 1e-4, "{key}: logits rel err {e:e}");
            let probs = tagger.probabilities(&be, &img).unwrap();
            let want = reference(&format!("{key}/probs"));
            for (i, (p, w)) in probs.iter().zip(&want).enumerate() {
                let e = ((p - w) / w).abs();
                assert!(e < 1e-4, "{key}: prob {i}: {p} vs {w} (rel {e:e})");
            }
        }
    }
}

/// Runs the binary; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// The reference probabilities of the v3-style model on wide-alpha.png, in selected_tags.csv's
/// order: ratings 0.438 0.749 0.254 0.690 (never written); general 1girl 0.156, long_hair
/// 0.468, smile 0.673, blue_sky 0.416, outdoors 0.915, simple_background 0.490; characters
/// hatsune_miku 0.862, kafuu_chino 0.969. With --threshold 0.5 --character-threshold 0.6:
/// kafuu_chino, outdoors, hatsune_miku, smile by probability; on small.png general 1girl 0.538,
/// long_hair 0.762, smile 0.743, outdoors 0.808, simple_background 0.693, characters 0.690,
/// 0.713: outdoors, long_hair, smile, kafuu_chino, simple_background, hatsune_miku, 1girl.
#[test]
fn caption_writes_keeps_appends_and_overwrites() {
    let t = TempDir::new("caption");
    let d = t.path("data/5_x");
    fs::create_dir_all(&d).unwrap();
    for image in IMAGES {
        fs::copy(
            fixtures().join(format!("images/{image}.png")),
            d.join(format!("{image}.png")),
        )
        .unwrap();
    }
    fs::write(d.join("small.txt"), "my tag, Long_Hair\n").unwrap();
    fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fs::write(d.join("notes.md"), "not a picture").unwrap();
    let data = t.path("data");
    let tagger = fixtures().join("vit-v3");
    let base = [
        "caption",
        data.to_str().unwrap(),
        "--tagger",
        tagger.to_str().unwrap(),
        "--threshold",
        "0.5",
        "--character-threshold",
        "0.6",
        "--trigger",
        "sks style",
        "--device",
        "cpu",
    ];

    let (code, out, err) = run(&base);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        read(&d.join("wide-alpha.txt")),
        "sks style, kafuu chino, outdoors, hatsune miku, smile\n"
    );
    // An existing caption is kept, and the model does not run on its picture.
    assert_eq!(read(&d.join("small.txt")), "my tag, Long_Hair\n");
    assert!(!d.join("broken.txt").exists());
    assert!(
        out.contains(
            "captioned 1 pictures; kept 1 existing captions; 0 already had every tag; 1 unreadable"
        ),
        "{out}"
    );
    assert!(out.contains("skipped 5_x/broken.png"), "{out}");
    assert!(out.contains("5_x/notes.md"), "{out}");
    assert!(err.contains("caption: 3/3 images"), "{err}");

    // --append: the tags a caption lacks, after its own; the trigger first.
    let mut append = base.to_vec();
    append.push("--append");
    let (code, out, err) = run(&append);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        read(&d.join("small.txt")),
        "sks style, my tag, Long_Hair, outdoors, smile, kafuu chino, simple background, \
         hatsune miku, 1girl\n"
    );
    assert!(
        out.contains("captioned 1 pictures; kept 0 existing captions; 1 already had every tag"),
        "{out}"
    );

    // --overwrite with underscores kept and a pattern of undesired tags.
    let mut over = base.to_vec();
    over.extend([
        "--overwrite",
        "--underscores",
        "--undesired-tags",
        "kafuu*,1GIRL",
    ]);
    let (code, out, err) = run(&over);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        read(&d.join("wide-alpha.txt")),
        "sks style, outdoors, hatsune_miku, smile\n"
    );
    assert_eq!(
        read(&d.join("small.txt")),
        "sks style, outdoors, long_hair, smile, simple_background, hatsune_miku\n"
    );
    // No temporary file is left beside the captions.
    let names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// A copy of the v3-style tagger with one file changed.
fn broken_tagger(t: &TempDir, name: &str, file: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = t.path(name);
    fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "config.json", "selected_tags.csv"] {
        fs::copy(fixtures().join("vit-v3").join(f), dir.join(f)).unwrap();
    }
    let p = dir.join(file);
    fs::write(&p, edit(read(&p))).unwrap();
    dir
}

#[test]
fn bad_tagger_files_and_options_exit_2_naming_them() {
    let t = TempDir::new("caption-bad");
    let data = t.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::copy(fixtures().join("images/small.png"), data.join("a.png")).unwrap();
    let d = data.to_str().unwrap();
    let few_rows = broken_tagger(&t, "rows", "selected_tags.csv", |s| {
        s.lines().take(12).collect::<Vec<_>>().join("\n")
    });
    let deeper = broken_tagger(&t, "depth", "config.json", |s| {
        s.replace("\"depth\": 2", "\"depth\": 3")
    });
    let wider = broken_tagger(&t, "width", "config.json", |s| {
        s.replace("\"embed_dim\": 24", "\"embed_dim\": 32")
    });
    let swin = broken_tagger(&t, "swin", "config.json", |s| {
        s.replace("vit_base_patch16_224", "swinv2_base_window8_256")
    });
    let no_csv = broken_tagger(&t, "nocsv", "config.json", |s| s);
    fs::remove_file(no_csv.join("selected_tags.csv")).unwrap();
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let cmd =
        |tagger: &str, extra: &str| format!("caption {d} --device cpu --tagger {tagger}{extra}");
    assert_bad_input(&[
        (cmd(&p(&t.path("nowhere")), ""), "nowhere: no such folder"),
        (cmd(&p(&no_csv), ""), "selected_tags.csv: missing"),
        (
            cmd(&p(&few_rows), ""),
            "11 tag rows, but the model has 12 outputs",
        ),
        (
            cmd(&p(&deeper), ""),
            "tensor `blocks.2.attn.qkv.weight` is missing",
        ),
        (cmd(&p(&wider), ""), "tensor `patch_embed.proj.weight` in "),
        (
            cmd(&p(&swin), ""),
            "\"swinv2_base_window8_256\" is not a timm ViT",
        ),
        (
            cmd(&p(&fixtures().join("vit-v3")), " --threshold 1.5"),
            "--threshold 1.5: expected a probability between 0 and 1",
        ),
        (
            format!(
                "caption {} --tagger {}",
                p(&t.path("nodata")),
                p(&fixtures().join("vit-v3"))
            ),
            "nodata does not exist",
        ),
    ]);
}

fn clip_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn clip_reference(name: &str) -> Vec<f32> {
    let r = Weights::open(clip_fixtures().join("reference.safetensors")).unwrap();
    let shape = r.shape(name).unwrap().to_vec();
    r.get(name, shape).unwrap().to_f32_vec()
}

/// The fixture's vocabularies, in name order as the reference embeds them.
fn clip_vocabularies() -> Vec<Vocabulary> {
    ["colours", "things"]
        .iter()
        .map(|v| Vocabulary::read(&clip_fixtures().join(format!("vocab/{v}.txt"))).unwrap())
        .collect()
}

fn clip_image(name: &str) -> PathBuf {
    match name {
        "large" => clip_fixtures().join("images/large.png"),
        other => fixtures().join(format!("images/{other}.png")),
    }
}

/// transformers' CLIPModel on a tiny random model (tests/fixtures/make_clip_fixture.py): the
/// processor's pixel values, image and text embeddings, the similarities and their ranking;
/// a second run reads the phrase embeddings from the cache; the single-file form loads the
/// same model.
#[test]
fn clip_matches_transformers() {
    let be = CpuBackend::new();
    let t = TempDir::new("clip-golden");
    let model = ClipModel::load(&clip_fixtures().join("tiny"), &be).unwrap();
    let vocabs = clip_vocabularies();
    let phrases: Vec<String> = vocabs.iter().flat_map(|v| v.phrases.clone()).collect();
    let want_ids = clip_reference("text/ids");
    for (i, p) in phrases.iter().enumerate() {
        let ids = model.ids(p);
        let row = &want_ids[i * 77..i * 77 + ids.len()];
        assert!(
            ids.iter().zip(row).all(|(&a, &b)| a as f32 == b),
            "{p}: {ids:?} vs {row:?}"
        );
    }
    let text = model.text_embeds(&be, &phrases, &mut |_, _| {}).unwrap();
    let e = rel_err(&text, &clip_reference("text/text_embeds"));
    assert!(e < 1e-4, "text_embeds rel err {e:e}");
    let cache = t.path("cache");
    let mut embedded = 0;
    let it = Interrogator::new(model, vocabs.clone(), 2, &be, Some(&cache), &mut |d, _| {
        embedded = d
    })
    .unwrap();
    assert_eq!(embedded, phrases.len());
    for image in ["wide-alpha", "small", "large"] {
        let path = clip_image(image);
        let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
        let pixels = it.model.preprocess.pixels(&img);
        let want = clip_reference(&format!("{image}/pixels"));
        let e = rel_err(&pixels, &want);
        assert!(e < 1e-6, "{image}: pixel values rel err {e:e}");
        let emb = it.model.image_embeds(&be, &pixels).unwrap();
        let e = rel_err(&emb, &clip_reference(&format!("{image}/image_embeds")));
        assert!(e < 1e-4, "{image}: image_embeds rel err {e:e}");
        let sims = it.similarities(&be, &img).unwrap();
        let want = clip_reference(&format!("{image}/similarity"));
        let e = rel_err(&sims, &want);
        assert!(e < 1e-4, "{image}: similarity rel err {e:e}");
        let rank = |s: &[f32]| {
            let mut idx: Vec<usize> = (0..s.len()).collect();
            idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            idx
        };
        assert_eq!(rank(&sims), rank(&want), "{image}: ranking");
    }
    // The single file loads the same model (config.json beside it); the cached embeddings
    // are read, not recomputed.
    let single = ClipModel::load(&clip_fixtures().join("tiny/model.safetensors"), &be).unwrap();
    let mut embedded = 0;
    let again = Interrogator::new(single, vocabs, 2, &be, Some(&cache), &mut |d, _| {
        embedded = d
    })
    .unwrap();
    assert_eq!(embedded, 0, "the phrase embeddings come from the cache");
    let path = clip_image("large");
    let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        again.similarities(&be, &img).unwrap(),
        it.similarities(&be, &img).unwrap()
    );
}

/// The caption the reference similarities give: the `top` best phrases of each fixture
/// vocabulary, all by similarity.
fn clip_expected(image: &str, top: usize) -> String {
    let sims = clip_reference(&format!("{image}/similarity"));
    let mut chosen: Vec<(String, f32)> = Vec::new();
    let mut start = 0;
    for v in clip_vocabularies() {
        let mut idx: Vec<usize> = (0..v.phrases.len()).collect();
        idx.sort_by(|&a, &b| sims[start + b].total_cmp(&sims[start + a]));
        chosen.extend(
            idx.iter()
                .take(top)
                .map(|&i| (v.phrases[i].clone(), sims[start + i])),
        );
        start += v.phrases.len();
    }
    chosen.sort_by(|a, b| b.1.total_cmp(&a.1));
    chosen
        .into_iter()
        .map(|(p, _)| p)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `caption --clip` on a folder (sidecars, a corrupt picture skipped), then `--metadata-csv`
/// with --clip (--overwrite, --top 2) and --tagger (--append) merging into one CSV that the
/// data loader reads.
#[test]
fn clip_captions_and_metadata_csv() {
    let t = TempDir::new("caption-clip");
    let d = t.path("data");
    fs::create_dir_all(&d).unwrap();
    for image in ["wide-alpha", "small", "large"] {
        fs::copy(clip_image(image), d.join(format!("{image}.png"))).unwrap();
    }
    fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (model, cache) = (s(&clip_fixtures().join("tiny")), s(&t.path("cache")));
    let vocab = |v: &str| s(&clip_fixtures().join(format!("vocab/{v}.txt")));
    let base: Vec<String> = [
        "caption",
        &s(&d),
        "--clip",
        &model,
        "--vocab",
        &vocab("colours"),
        "--vocab",
        &vocab("things"),
        "--cache-dir",
        &cache,
        "--device",
        "cpu",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let argv = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|x| x.to_string()))
            .collect()
    };
    let go = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, Some(0), "{out}\n{err}");
        (out, err)
    };
    let (out, err) = go(argv(&["--trigger", "sks"]));
    for image in ["wide-alpha", "small", "large"] {
        assert_eq!(
            read(&d.join(format!("{image}.txt"))),
            format!("sks, {}\n", clip_expected(image, 1)),
            "{image}"
        );
    }
    assert!(
        out.contains("captioned 3 pictures") && out.contains("1 unreadable"),
        "{out}"
    );
    assert!(out.contains("skipped broken.png"), "{out}");
    assert!(err.contains("clip vocabulary: 11/11 phrases"), "{err}");
    assert!(err.contains("caption: 4/4 images"), "{err}");

    // Into a CSV: the sidecars are not the CSV's captions, so every picture is captioned.
    let csv = d.join("metadata.csv");
    fs::write(&csv, "file_name,text\nlarge.png,my own words\n").unwrap();
    let (out, err) = go(argv(&["--metadata-csv", &s(&csv), "--top", "2"]));
    // The phrase embeddings came from the cache this time.
    assert!(!err.contains("clip vocabulary"), "{err}");
    assert!(out.contains("captions written to"), "{out}");
    let md = lorafuse::data::metadata::read_metadata(&csv).unwrap();
    assert_eq!(md.get("large.png").unwrap().text, "my own words");
    assert_eq!(md.get("small.png").unwrap().text, clip_expected("small", 2));
    let (_, _) = go(argv(&["--metadata-csv", &s(&csv), "--overwrite"]));
    let md = lorafuse::data::metadata::read_metadata(&csv).unwrap();
    assert_eq!(md.get("large.png").unwrap().text, clip_expected("large", 1));
    assert_eq!(
        md.rows[0].file_name, "large.png",
        "existing rows keep their place"
    );
    assert!(md.get("broken.png").is_none());

    // The tagger appends its tags to the same rows (tests/fixtures/tagger/vit-v3 on
    // small.png: outdoors, long_hair, smile above 0.7).
    let tagger = s(&fixtures().join("vit-v3"));
    let (code, out, err) = run(&[
        "caption",
        &s(&d),
        "--tagger",
        &tagger,
        "--threshold",
        "0.7",
        "--character-threshold",
        "0.99",
        "--metadata-csv",
        &s(&csv),
        "--append",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let md = lorafuse::data::metadata::read_metadata(&csv).unwrap();
    assert_eq!(
        md.get("small.png").unwrap().text,
        format!("{}, outdoors, long hair, smile", clip_expected("small", 1))
    );
}

#[test]
fn bad_clip_files_and_vocabularies_exit_2_naming_them() {
    let t = TempDir::new("caption-clip-bad");
    let data = t.path("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::copy(clip_image("small"), data.join("a.png")).unwrap();
    let d = data.to_str().unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let copy = |name: &str, files: &[&str]| {
        let dir = t.path(name);
        fs::create_dir_all(&dir).unwrap();
        for f in files {
            fs::copy(clip_fixtures().join("tiny").join(f), dir.join(f)).unwrap();
        }
        dir
    };
    let wider = copy("wider", &["model.safetensors", "config.json"]);
    let cfg = wider.join("config.json");
    fs::write(
        &cfg,
        read(&cfg).replace("\"hidden_size\": 8", "\"hidden_size\": 16"),
    )
    .unwrap();
    let no_weights = copy("noweights", &["config.json"]);
    let alone = copy("alone", &["model.safetensors"]);
    let not_utf8 = t.path("latin1.txt");
    fs::write(&not_utf8, b"caf\xe9\n").unwrap();
    let empty = t.path("empty.txt");
    fs::write(&empty, "# nothing\n\n").unwrap();
    let tiny = p(&clip_fixtures().join("tiny"));
    let cmd = |model: &str, extra: &str| {
        format!(
            "caption {d} --device cpu --cache-dir {} --clip {model}{extra}",
            p(&t.path("c"))
        )
    };
    assert_bad_input(&[
        (
            cmd(&p(&t.path("nowhere")), ""),
            "nowhere: no such file or folder",
        ),
        (cmd(&p(&no_weights), ""), "model.safetensors: missing"),
        (
            cmd(&p(&wider), ""),
            "wider/model.safetensors has shape [8], expected [16]",
        ),
        (
            cmd(&p(&alone.join("model.safetensors")), ""),
            "not a multiple of SD1.x's CLIP head width 64",
        ),
        (
            cmd(&tiny, &format!(" --vocab {}", p(&t.path("missing.txt")))),
            "missing.txt: cannot read it",
        ),
        (
            cmd(&tiny, &format!(" --vocab {}", p(&not_utf8))),
            "latin1.txt: not UTF-8 text",
        ),
        (
            cmd(&tiny, &format!(" --vocab {}", p(&empty))),
            "empty.txt: no phrases",
        ),
        (
            cmd(
                &tiny,
                &format!(" --metadata-csv {}", p(&data.join("sub/m.csv"))),
            ),
            "m.csv: it is not in",
        ),
        (cmd(&tiny, " --top 0"), "--top 0"),
    ]);
}
