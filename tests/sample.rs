//! Sampling: kohya's prompt lines, the noise schedule and the DDIM/Euler samplers against
//! diffusers (tests/fixtures/schedulers.json, made by make_scheduler_fixture.py), guidance,
//! end-to-end generation on the tiny fixture model, PNG writing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lorafuse::backend::prelude::*;
use lorafuse::lora::{kohya, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::clip::ClipTextModel;
use lorafuse::model::cond::Cond;
use lorafuse::model::family::TextEncoders;
use lorafuse::model::layers::Ctx;
use lorafuse::model::tokenizer::{Tokenizer, BOS, EOS};
use lorafuse::model::unet::Unet;
use lorafuse::model::vae::Vae;
use lorafuse::sample::{
    generate, guidance, load_png, parse_prompt_file, parse_prompt_line, save_png, v_to_eps,
    Generated, NoiseSchedule, Pipeline, PromptDefaults, PromptSpec, RgbImage, SampleError, Sampler,
    SamplerConfig, SamplerKind, StepNoise, TimestepSpacing,
};
use lorafuse::{CpuBackend, DType, Tensor};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---------------------------------------------------------------- prompt lines

fn parse(line: &str) -> Result<PromptSpec, SampleError> {
    parse_prompt_line(line, &PromptDefaults::default())
}

#[test]
fn prompt_line_reads_every_option() {
    let s = parse(
        "a cat, best quality --n blurry, lowres --w 512 --h 768 --d 42 --s 28 --l 7.5 --ss euler",
    )
    .unwrap();
    assert_eq!(s.prompt, "a cat, best quality");
    assert_eq!(s.negative_prompt, "blurry, lowres");
    assert_eq!((s.width, s.height), (512, 768));
    assert_eq!(s.seed, Some(42));
    assert_eq!(s.steps, 28);
    assert_eq!(s.cfg_scale, 7.5);
    assert_eq!(s.sampler, SamplerKind::Euler);
    assert!(s.notes.is_empty(), "{:?}", s.notes);

    // Case-insensitive names and sampler, kohya's k_ alias, any order, extra spaces.
    let s = parse("  dog  --SS K_Euler --L 3 --D 18446744073709551615   --W 640  ").unwrap();
    assert_eq!(s.prompt, "dog");
    assert_eq!(s.sampler, SamplerKind::Euler);
    assert_eq!(s.cfg_scale, 3.0);
    assert_eq!(s.seed, Some(u64::MAX));
    assert_eq!(s.width, 640);
    let s = parse("x --ss DDIM").unwrap();
    assert_eq!(s.sampler, SamplerKind::Ddim);
}

#[test]
fn prompt_line_defaults() {
    let s = parse("just a prompt").unwrap();
    assert_eq!(
        s,
        PromptSpec {
            prompt: "just a prompt".into(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            seed: None,
            steps: 30,
            cfg_scale: 7.5,
            sampler: SamplerKind::Ddim,
            notes: vec![],
        }
    );
    let defaults = PromptDefaults {
        negative_prompt: "ugly".into(),
        width: 768,
        height: 640,
        seed: Some(7),
        steps: 20,
        cfg_scale: 5.0,
        sampler: SamplerKind::Euler,
    };
    let s = parse_prompt_line("p --h 512", &defaults).unwrap();
    assert_eq!(s.negative_prompt, "ugly");
    assert_eq!(
        (s.width, s.height, s.seed, s.steps),
        (768, 512, Some(7), 20)
    );
    assert_eq!((s.cfg_scale, s.sampler), (5.0, SamplerKind::Euler));

    // Options only: an empty prompt.
    let s = parse("--w 256 --n bad").unwrap();
    assert_eq!(
        (s.prompt.as_str(), s.width, s.negative_prompt.as_str()),
        ("", 256, "bad")
    );
    assert_eq!(parse("").unwrap().prompt, "");
    // "--" inside a word is not an option.
    assert_eq!(parse("a--b c").unwrap().prompt, "a--b c");
}

#[test]
fn prompt_line_rounds_sizes_and_clamps_steps_with_notes() {
    let s = parse("p --w 500 --h 30 --s 0").unwrap();
    assert_eq!((s.width, s.height, s.steps), (448, 64, 1));
    assert_eq!(s.notes.len(), 3, "{:?}", s.notes);
    assert!(s.notes[0].contains("--w 500") && s.notes[0].contains("448"));
    assert!(s.notes[1].contains("--h 30") && s.notes[1].contains("64"));
    let s = parse("p --s 5000").unwrap();
    assert_eq!(s.steps, 1000);
    let s = parse("p --s 99999999999999999999999999").unwrap();
    assert_eq!(s.steps, 1000);
    let s = parse("p --w 4096 --h 4096 --l 0").unwrap();
    assert_eq!((s.width, s.height, s.cfg_scale), (4096, 4096, 0.0));
    // Given twice: the last wins, with a note.
    let s = parse("p --d 1 --d 2").unwrap();
    assert_eq!(s.seed, Some(2));
    assert!(s.notes[0].contains("more than once"), "{:?}", s.notes);
}

fn err(line: &str) -> String {
    match parse(line) {
        Ok(s) => panic!("{line:?} parsed: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn prompt_line_errors_name_the_option_and_value() {
    let e = err("p --x 3");
    assert!(e.contains("unknown option --x"), "{e}");
    assert!(e.contains("--ss"), "lists the known options: {e}");
    let e = err("p --cn image.png");
    assert!(e.contains("--cn") && e.contains("does not support"), "{e}");
    let e = err("p --w");
    assert!(e.contains("--w needs a value"), "{e}");
    let e = err("p --w 512px");
    assert!(e.contains("--w \"512px\""), "{e}");
    let e = err("p --h -64");
    assert!(e.contains("--h \"-64\""), "{e}");
    let e = err("p --w 8192");
    assert!(e.contains("--w \"8192\"") && e.contains("4096"), "{e}");
    let e = err("p --d -1");
    assert!(e.contains("--d \"-1\""), "{e}");
    let e = err("p --d 18446744073709551616");
    assert!(e.contains("--d"), "{e}");
    let e = err("p --s 2.5");
    assert!(e.contains("--s \"2.5\""), "{e}");
    let e = err("p --l -2");
    assert!(e.contains("--l \"-2\"") && e.contains(">= 0"), "{e}");
    let e = err("p --l nan");
    assert!(e.contains("--l \"nan\""), "{e}");
    // A kohya sampler lorafuse lacks: why, and which to use instead.
    let e = err("p --ss heun");
    assert!(
        e.contains("heun") && e.contains("not implemented") && e.contains("use dpmsolver++"),
        "{e}"
    );
    let e = err("p --ss foo");
    assert!(
        e.contains("--ss \"foo\"") && e.contains("one of ddim, euler (k_euler), euler_a"),
        "{e}"
    );
    let e = err("p -- --w 64");
    assert!(e.contains("unknown option --"), "{e}");
    let e = err("p --");
    assert!(e.contains("unknown option --"), "{e}");
    let e = err("p --w=512");
    assert!(e.contains("unknown option --w=512"), "{e}");
    // Odd input never panics.
    for line in [
        "--",
        " -- ",
        "\u{0} --\u{0}",
        "--ss",
        "é --n é --w ５１２",
        "\t--\t",
    ] {
        let _ = parse(line);
    }
}

#[test]
fn prompt_file_skips_comments_and_names_the_line() {
    let text = "# samples\n\na cat --w 512\n  \nb dog --d 3\n#c --x\n";
    let specs = parse_prompt_file(text, &PromptDefaults::default()).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].prompt, "a cat");
    assert_eq!(specs[1].seed, Some(3));
    let e = parse_prompt_file("ok\n\nbad --q 1\n", &PromptDefaults::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("line 3: ") && e.contains("--q"), "{e}");
}

// ---------------------------------------------------------------- schedule and samplers

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("schedulers.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn config(name: &str) -> SamplerConfig {
    match name {
        "sd15" => SamplerConfig::sd15(),
        "leading_offset0_alpha_one" => SamplerConfig {
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
        },
        "linspace" => SamplerConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            set_alpha_to_one: false,
        },
        other => panic!("fixture config {other} unknown to the test"),
    }
}

/// max |a − b| / max(1, max |b|) over two equal-length lists.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn schedule_matches_diffusers() {
    let s = NoiseSchedule::sd15();
    assert_eq!(s.num_train_timesteps(), 1000);
    assert!((s.betas()[0] - 0.00085).abs() < 1e-15);
    assert!((s.betas()[999] - 0.012).abs() < 1e-15);
    let ac = &fixture()["alphas_cumprod"];
    let idx: Vec<usize> = ac["index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    let ours: Vec<f64> = idx.iter().map(|&i| s.alphas_cumprod()[i]).collect();
    // The same formula in f64 (numpy): equal to rounding.
    let f64_ref = floats(&ac["f64"]);
    for (o, r) in ours.iter().zip(&f64_ref) {
        assert!((o - r).abs() <= 1e-14 * r, "{o} vs {r}");
    }
    // diffusers' float32 values, about 1e-6 relative away.
    let f32_ref = floats(&ac["diffusers_f32"]);
    let mut worst = 0.0f64;
    for (o, r) in ours.iter().zip(&f32_ref) {
        worst = worst.max((o - r).abs() / r);
    }
    eprintln!("alphas_cumprod vs diffusers float32: max relative difference {worst:.2e}");
    assert!(worst < 5e-6, "{worst}");
    assert!((s.alphas_cumprod()[0] - 0.99915).abs() < 1e-12);
    assert!((s.alphas_cumprod()[999] - 0.004660095).abs() < 1e-8);

    let t = 500;
    let a = s.alphas_cumprod()[t];
    assert_eq!(s.sqrt_alpha_bar(t), Some(a.sqrt()));
    assert_eq!(s.sqrt_one_minus_alpha_bar(t), Some((1.0 - a).sqrt()));
    assert_eq!(s.snr(t), Some(a / (1.0 - a)));
    let sigma = s.sigma(t).unwrap();
    assert!((sigma * sigma - 1.0 / s.snr(t).unwrap()).abs() < 1e-12);
    assert_eq!(s.alpha_bar(1000), None);
    assert_eq!(s.snr(usize::MAX), None);
    let (ca, cb) = s.add_noise_coefficients(&[0, 999]).unwrap();
    assert_eq!(
        ca,
        vec![s.sqrt_alpha_bar(0).unwrap(), s.sqrt_alpha_bar(999).unwrap()]
    );
    assert_eq!(cb[1], s.sqrt_one_minus_alpha_bar(999).unwrap());
    assert!(s.add_noise_coefficients(&[1000]).is_err());

    assert_eq!(
        NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap(),
        s
    );
    assert!(NoiseSchedule::scaled_linear(0, 0.00085, 0.012).is_err());
    assert!(NoiseSchedule::scaled_linear(10, 0.0, 0.012).is_err());
    assert!(NoiseSchedule::scaled_linear(10, 0.1, 1.0).is_err());
    assert!(NoiseSchedule::scaled_linear(10, f64::NAN, 0.5).is_err());
    assert_eq!(
        NoiseSchedule::scaled_linear(1, 0.1, 0.2)
            .unwrap()
            .alphas_cumprod(),
        [0.9]
    );
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let schedule = NoiseSchedule::sd15();
    let mut worst_sigma = 0.0f64;
    for (name, rows) in fixture()["timesteps"].as_object().unwrap() {
        let cfg = config(name);
        for row in rows.as_array().unwrap() {
            let n = row["steps"].as_u64().unwrap() as usize;
            let ddim = Sampler::new(SamplerKind::Ddim, &schedule, &cfg, n).unwrap();
            assert_eq!(
                ddim.timesteps(),
                floats(&row["ddim_timesteps"]),
                "{name} n={n}"
            );
            assert_eq!(ddim.init_noise_sigma(), 1.0);
            assert!(ddim.sigmas().is_empty());
            let euler = Sampler::new(SamplerKind::Euler, &schedule, &cfg, n).unwrap();
            // float32 in diffusers: compare at f32 precision.
            let ts: Vec<f32> = euler.timesteps().iter().map(|&t| t as f32).collect();
            let want: Vec<f32> = floats(&row["euler_timesteps"])
                .iter()
                .map(|&t| t as f32)
                .collect();
            assert_eq!(ts, want, "{name} n={n}");
            let sig_ref = floats(&row["euler_sigmas"]);
            let d = max_diff(euler.sigmas(), &sig_ref);
            assert!(d < 2e-6, "{name} n={n}: sigmas differ by {d}");
            worst_sigma = worst_sigma.max(d);
            let init = row["euler_init_noise_sigma"].as_f64().unwrap();
            // Absolute at small σ: diffusers' float32 1 − ᾱ_0 keeps only ~4 digits.
            let d = (euler.init_noise_sigma() - init).abs();
            assert!(d < 2e-6 * init.max(1.0), "{name} n={n}: {d}");
            assert_eq!(euler.len(), n);
        }
    }
    eprintln!(
        "Euler sigmas vs diffusers: max difference {worst_sigma:.2e} (relative to max(1, max σ))"
    );
    // SD1.5 with 30 steps: 958, 925, …, 1 (1000 div 30 = 33 apart, offset 1).
    let s = Sampler::new(SamplerKind::Ddim, &schedule, &SamplerConfig::sd15(), 30).unwrap();
    assert_eq!(s.timesteps()[0], 958.0);
    assert_eq!(s.timesteps()[29], 1.0);
}

#[test]
fn sampler_settings_errors() {
    let schedule = NoiseSchedule::sd15();
    let cfg = SamplerConfig::sd15();
    for kind in [SamplerKind::Ddim, SamplerKind::Euler] {
        assert!(Sampler::new(kind, &schedule, &cfg, 0).is_err());
        assert!(Sampler::new(kind, &schedule, &cfg, 1001).is_err());
        assert!(Sampler::new(kind, &schedule, &cfg, 999).is_ok());
    }
    // Leading + offset 1 at 1000 steps would read ᾱ_1000 (diffusers raises IndexError).
    let e = Sampler::new(SamplerKind::Ddim, &schedule, &cfg, 1000).unwrap_err();
    assert!(e.to_string().contains("steps = 1000"), "{e}");
    let s = Sampler::new(SamplerKind::Ddim, &schedule, &config("linspace"), 1000).unwrap();
    assert_eq!(s.len(), 1000);
    assert_eq!(s.step_coefficients(1000), None);
    assert_eq!(s.model_input_scale(1000), None);
    let be = CpuBackend::new();
    let x = Tensor::from_f32([1, 1], vec![1.0]).unwrap();
    assert!(s.step(&be, 1000, &x, &x).is_err());
}

/// eps = 0.1·x + 0.05·t/1000, the fixture's fake model.
fn fake_model(x: &Tensor, t: f64) -> Result<Tensor, SampleError> {
    let v: Vec<f32> = x
        .to_f32_vec()
        .iter()
        .map(|&v| 0.1 * v + (0.05 * t / 1000.0) as f32)
        .collect();
    Ok(Tensor::from_f32(x.dims().to_vec(), v)?)
}

#[test]
fn trajectories_match_diffusers_step_by_step() {
    let be = CpuBackend::new();
    let schedule = NoiseSchedule::sd15();
    let f = fixture();
    let shape: Vec<usize> = f["trajectory_noise"]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let noise: Vec<f32> = floats(&f["trajectory_noise"]["values"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    let noise = Tensor::from_f32(shape, noise).unwrap();
    for (name, pair) in f["trajectories"].as_object().unwrap() {
        for (kind, key) in [(SamplerKind::Ddim, "ddim"), (SamplerKind::Euler, "euler")] {
            let tr = &pair[key];
            let steps = tr["steps"].as_array().unwrap();
            let lat: Vec<Vec<f64>> = tr["latents"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect();
            let s = Sampler::new(kind, &schedule, &config(name), steps.len()).unwrap();
            let init = tr["init_noise_sigma"].as_f64().unwrap();
            assert!((s.init_noise_sigma() - init).abs() < 2e-6 * init);

            // Step by step from diffusers' own previous latents: each step's error alone.
            let mut worst_step = 0.0f64;
            for (i, st) in steps.iter().enumerate() {
                assert_eq!(s.timesteps()[i] as f32, st["t"].as_f64().unwrap() as f32);
                let scale = s.model_input_scale(i).unwrap();
                assert!((scale - st["input_scale"].as_f64().unwrap()).abs() < 1e-6);
                let x = Tensor::from_f32(
                    noise.dims().to_vec(),
                    lat[i].iter().map(|&v| v as f32).collect(),
                )
                .unwrap();
                let x_in = be.scale(&x, scale).unwrap();
                let eps = fake_model(&x_in, s.timesteps()[i]).unwrap();
                let next = s.step(&be, i, &x, &eps).unwrap();
                worst_step = worst_step.max(max_diff(&next.to_f64_vec(), &lat[i + 1]));
            }

            // The whole loop from the noise.
            let mut seen = Vec::new();
            let out = s
                .run(
                    &be,
                    &noise,
                    &mut fake_model,
                    Some(&mut |i, n| seen.push((i, n))),
                )
                .unwrap();
            assert_eq!(
                seen,
                (1..=steps.len())
                    .map(|i| (i, steps.len()))
                    .collect::<Vec<_>>()
            );
            let last = lat.last().unwrap();
            let worst_run = max_diff(&out.to_f64_vec(), last);
            eprintln!(
                "{name} {key}: per step max diff {worst_step:.2e}, whole run {worst_run:.2e} \
                 (relative to max(1, max |x|))"
            );
            assert!(
                worst_step < 1e-5,
                "{name} {key}: step differs by {worst_step}"
            );
            assert!(worst_run < 1e-5, "{name} {key}: run differs by {worst_run}");
        }
    }
}

// ---------------------------------------------------------------- Euler a, DPM-Solver (++), Karras

#[test]
fn sampler_names_as_kohya_maps_them() {
    for (name, kind) in [
        ("ddim", SamplerKind::Ddim),
        ("euler", SamplerKind::Euler),
        ("K_EULER", SamplerKind::Euler),
        ("euler_a", SamplerKind::EulerAncestral),
        ("k_euler_a", SamplerKind::EulerAncestral),
        ("dpmsolver", SamplerKind::DpmSolver),
        ("dpmsolver++", SamplerKind::DpmSolverPP),
        ("dpmpp_2m", SamplerKind::DpmSolverPP),
        ("dpmsolver++_karras", SamplerKind::DpmSolverPPKarras),
        ("k_dpm_2m_karras", SamplerKind::DpmSolverPPKarras),
        ("k_dpmpp_2m_ka", SamplerKind::DpmSolverPPKarras),
    ] {
        assert_eq!(SamplerKind::from_name(name), Ok(kind), "{name}");
        assert_eq!(SamplerKind::parse(kind.name()), Some(kind));
    }
    assert_eq!(
        parse("p --ss Euler_A").unwrap().sampler,
        SamplerKind::EulerAncestral
    );
    // Every other kohya name is refused with the reason and what to use.
    for name in [
        "ddpm",
        "pndm",
        "lms",
        "k_lms",
        "heun",
        "dpm_2",
        "k_dpm_2",
        "dpm_2_a",
        "k_dpm_2_a",
        "dpmsingle",
    ] {
        let e = SamplerKind::from_name(name).unwrap_err();
        assert!(
            e.contains(&format!("kohya's sampler {name:?}: "))
                && e.contains("is not implemented")
                && e.contains("; use "),
            "{e}"
        );
    }
    assert!(SamplerKind::not_implemented("euler").is_none());
    assert_eq!(
        SamplerKind::from_name("nope").unwrap_err(),
        format!("one of {}", SamplerKind::accepted())
    );
}

fn ints(v: &Value) -> Vec<f64> {
    floats(v)
}

#[test]
fn dpm_solver_and_euler_a_timesteps_and_sigmas_match_diffusers() {
    let schedule = NoiseSchedule::sd15();
    for (name, rows) in fixture()["timesteps"].as_object().unwrap() {
        let cfg = config(name);
        for row in rows.as_array().unwrap() {
            let n = row["steps"].as_u64().unwrap() as usize;
            // Euler ancestral: Euler's timesteps, sigmas and initial noise (diffusers' equal,
            // asserted by the fixture script).
            let euler = Sampler::new(SamplerKind::Euler, &schedule, &cfg, n).unwrap();
            let a = Sampler::new(SamplerKind::EulerAncestral, &schedule, &cfg, n).unwrap();
            assert_eq!(a.timesteps(), euler.timesteps());
            assert_eq!(a.sigmas(), euler.sigmas());
            assert_eq!(a.init_noise_sigma(), euler.init_noise_sigma());

            let pp = Sampler::new(SamplerKind::DpmSolverPP, &schedule, &cfg, n).unwrap();
            assert_eq!(pp.timesteps(), ints(&row["dpm_timesteps"]), "{name} n={n}");
            let d = max_diff(pp.sigmas(), &floats(&row["dpm_sigmas"]));
            assert!(d < 2e-6, "{name} n={n}: sigmas differ by {d}");
            assert_eq!(pp.init_noise_sigma(), 1.0);
            assert_eq!(pp.model_input_scale(0), Some(1.0));

            let dpm = Sampler::new(SamplerKind::DpmSolver, &schedule, &cfg, n).unwrap();
            assert_eq!(dpm.timesteps(), pp.timesteps());
            assert_eq!(dpm.sigmas()[..n], pp.sigmas()[..n]);
            let last = row["dpmsolver_final_sigma"].as_f64().unwrap();
            // σ_0 from diffusers' float32 1 − ᾱ_0, which keeps about 4 digits.
            assert!((dpm.sigmas()[n] - last).abs() < 2e-6, "{name} n={n}");
        }
    }
    for row in fixture()["karras"].as_array().unwrap() {
        let n = row["steps"].as_u64().unwrap() as usize;
        let k = Sampler::new(
            SamplerKind::DpmSolverPPKarras,
            &schedule,
            &SamplerConfig::sd15(),
            n,
        )
        .unwrap();
        assert_eq!(k.timesteps(), ints(&row["timesteps"]), "karras n={n}");
        let d = max_diff(k.sigmas(), &floats(&row["sigmas"]));
        assert!(d < 2e-6, "karras n={n}: sigmas differ by {d}");
    }
}

fn kind_of(key: &str) -> SamplerKind {
    SamplerKind::parse(key).unwrap_or_else(|| panic!("fixture sampler {key} unknown"))
}

/// Replays the noise diffusers' Euler ancestral steps drew.
struct Recorded(std::collections::VecDeque<Vec<f64>>);

impl StepNoise for Recorded {
    fn unit_noise(&mut self, n: usize) -> Vec<f64> {
        let v = self.0.pop_front().expect("more noise than diffusers drew");
        assert_eq!(v.len(), n);
        v
    }
}

fn tensor_like(like: &Tensor, values: &[f64]) -> Tensor {
    Tensor::from_f32(
        like.dims().to_vec(),
        values.iter().map(|&v| v as f32).collect(),
    )
    .unwrap()
}

/// Checks a trajectory of a sampler besides DDIM and Euler, step by step from diffusers' own
/// latents (given its noise and the previous prediction) and as a whole run. Returns the
/// worst (step, run) differences.
fn check_trajectory(name: &str, key: &str, tr: &Value, noise: &Tensor) -> (f64, f64) {
    let be = CpuBackend::new();
    let schedule = NoiseSchedule::sd15();
    let kind = kind_of(key);
    let steps = tr["steps"].as_array().unwrap();
    let lat: Vec<Tensor> = tr["latents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| tensor_like(noise, &floats(v)))
        .collect();
    let s = Sampler::new(kind, &schedule, &config(name), steps.len()).unwrap();
    let init = tr["init_noise_sigma"].as_f64().unwrap();
    assert!((s.init_noise_sigma() - init).abs() < 2e-6 * init);
    let eps_at = |i: usize, x: &Tensor| {
        let x_in = be.scale(x, s.model_input_scale(i).unwrap()).unwrap();
        fake_model(&x_in, s.timesteps()[i]).unwrap()
    };
    let mut worst_step = 0.0f64;
    let mut recorded = std::collections::VecDeque::new();
    for (i, st) in steps.iter().enumerate() {
        assert_eq!(s.timesteps()[i] as f32, st["t"].as_f64().unwrap() as f32);
        let scale = s.model_input_scale(i).unwrap();
        assert!((scale - st["input_scale"].as_f64().unwrap()).abs() < 1e-6);
        let m = s.prediction(&be, i, &lat[i], eps_at(i, &lat[i])).unwrap();
        let prev = (i > 0).then(|| {
            s.prediction(&be, i - 1, &lat[i - 1], eps_at(i - 1, &lat[i - 1]))
                .unwrap()
        });
        let z = st.get("noise").map(|v| {
            recorded.push_back(floats(v));
            tensor_like(noise, &floats(v))
        });
        assert_eq!(z.is_some(), kind.is_ancestral(), "{name} {key}");
        let next = s
            .advance(&be, i, &lat[i], &m, prev.as_ref(), z.as_ref())
            .unwrap();
        worst_step = worst_step.max(max_diff(&next.to_f64_vec(), &lat[i + 1].to_f64_vec()));
    }
    let out = s
        .run_with(
            &be,
            noise,
            Some(&mut Recorded(recorded)),
            &mut fake_model,
            None,
        )
        .unwrap();
    let worst_run = max_diff(&out.to_f64_vec(), &lat.last().unwrap().to_f64_vec());
    eprintln!(
        "{name} {key} ({} steps): per step max diff {worst_step:.2e}, whole run {worst_run:.2e}",
        steps.len()
    );
    (worst_step, worst_run)
}

#[test]
fn euler_a_and_dpm_solver_trajectories_match_diffusers() {
    let f = fixture();
    let shape: Vec<usize> = f["trajectory_noise"]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let noise = Tensor::from_f32(
        shape,
        floats(&f["trajectory_noise"]["values"])
            .iter()
            .map(|&v| v as f32)
            .collect(),
    )
    .unwrap();
    let mut seen = Vec::new();
    for group in ["trajectories", "long_trajectories"] {
        for (name, by_kind) in f[group].as_object().unwrap() {
            for (key, tr) in by_kind.as_object().unwrap() {
                if key == "ddim" || key == "euler" {
                    continue; // trajectories_match_diffusers_step_by_step
                }
                let (step, run) = check_trajectory(name, key, tr, &noise);
                assert!(step < 1e-5, "{group} {name} {key}: step differs by {step}");
                assert!(run < 1e-5, "{group} {name} {key}: run differs by {run}");
                seen.push(kind_of(key));
            }
        }
    }
    for kind in [
        SamplerKind::EulerAncestral,
        SamplerKind::DpmSolver,
        SamplerKind::DpmSolverPP,
        SamplerKind::DpmSolverPPKarras,
    ] {
        assert!(seen.contains(&kind), "no fixture trajectory for {kind}");
    }
}

#[test]
fn multistep_and_ancestral_steps_need_their_inputs() {
    let be = CpuBackend::new();
    let schedule = NoiseSchedule::sd15();
    let cfg = SamplerConfig::sd15();
    let x = Tensor::from_f32([1, 2], vec![0.5, -1.0]).unwrap();

    // DPM-Solver++ 2M, 10 steps: first order at the first and last step, second order between.
    let pp = Sampler::new(SamplerKind::DpmSolverPP, &schedule, &cfg, 10).unwrap();
    assert!(pp.step_coefficients(0).is_some());
    assert!(pp.step(&be, 0, &x, &x).is_ok());
    assert_eq!(pp.step_coefficients(1), None);
    assert!(pp.coefficients(1).unwrap().prev != 0.0);
    let e = pp.step(&be, 1, &x, &x).unwrap_err().to_string();
    assert!(e.contains("previous step's prediction"), "{e}");
    // The last step lands on σ = 0 and returns x₀ = √(σ²+1)·x − σ·ε.
    let last = pp.coefficients(9).unwrap();
    assert_eq!((last.prev, last.x, last.this), (0.0, 0.0, 1.0));
    let sigma = pp.sigmas()[9];
    let (a, b) = pp.step_coefficients(9).unwrap();
    assert!((a - (sigma * sigma + 1.0).sqrt()).abs() < 1e-12 && (b + sigma).abs() < 1e-12);

    // DPM-Solver keeps ε; under 15 steps its last step is first order, from 15 on second.
    let dpm = Sampler::new(SamplerKind::DpmSolver, &schedule, &cfg, 14).unwrap();
    assert!(dpm.step_coefficients(13).is_some());
    let dpm = Sampler::new(SamplerKind::DpmSolver, &schedule, &cfg, 15).unwrap();
    assert!(dpm.step_coefficients(14).is_none());
    assert_eq!(
        (
            dpm.coefficients(3).unwrap().pred_x,
            dpm.coefficients(3).unwrap().pred_eps
        ),
        (0.0, 1.0)
    );

    // Euler ancestral: noise at every step but the last; run without a source is an error.
    let a = Sampler::new(SamplerKind::EulerAncestral, &schedule, &cfg, 4).unwrap();
    for i in 0..3 {
        assert!(a.coefficients(i).unwrap().noise > 0.0);
        assert_eq!(a.step_coefficients(i), None);
    }
    assert_eq!(a.coefficients(3).unwrap().noise, 0.0);
    let e = a.step(&be, 0, &x, &x).unwrap_err().to_string();
    assert!(
        e.contains("fresh noise") && e.contains("euler_a step 0"),
        "{e}"
    );
    let e = a
        .run(&be, &x, &mut fake_model, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("noise source"), "{e}");
    // With a generator: reproducible, and the noise matters.
    let run = |seed| {
        a.run_with(
            &be,
            &x,
            Some(&mut lorafuse::rng::Rng::new(seed)),
            &mut fake_model,
            None,
        )
        .unwrap()
        .to_f32_vec()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));

    // Steps DPM-Solver cannot take with leading spacing and steps_offset 1.
    for kind in [SamplerKind::DpmSolver, SamplerKind::DpmSolverPP] {
        assert!(Sampler::new(kind, &schedule, &cfg, 998).is_ok());
        let e = Sampler::new(kind, &schedule, &cfg, 999).unwrap_err();
        assert!(e.to_string().contains("steps = 999"), "{e}");
    }
    assert!(Sampler::new(SamplerKind::DpmSolverPPKarras, &schedule, &cfg, 1000).is_ok());
}

#[test]
fn generate_with_every_sampler_on_the_tiny_model() {
    let base = run(&spec("a photo of a cat", 42), false).unwrap();
    for kind in SamplerKind::ALL {
        let mut s = spec("a photo of a cat", 42);
        s.sampler = kind;
        let a = run(&s, false).unwrap();
        // Reproducible from the seed, Euler ancestral's fresh noise included.
        assert_eq!(run(&s, false).unwrap().image, a.image, "{kind}");
        if kind != SamplerKind::Ddim {
            let diff = a
                .image
                .data
                .iter()
                .zip(&base.image.data)
                .filter(|(x, y)| x != y)
                .count();
            assert!(diff > 100, "{kind}: only {diff} bytes differ from DDIM");
        }
    }
    // Another seed changes Euler ancestral's image.
    let mut s = spec("a photo of a cat", 42);
    s.sampler = SamplerKind::EulerAncestral;
    let a = run(&s, false).unwrap();
    s.seed = Some(43);
    assert_ne!(run(&s, false).unwrap().image, a.image);
}

#[test]
fn guidance_with_scale_one_is_the_conditional_prediction() {
    let be = CpuBackend::new();
    let u = Tensor::from_f32([1, 4], vec![0.3, -1.7, 1e-8, 5.0]).unwrap();
    let c = Tensor::from_f32([1, 4], vec![-0.123_456_7, 2.5, 3.0, -0.0]).unwrap();
    let g = guidance(&be, &u, &c, 1.0).unwrap();
    assert_eq!(g.to_f32_vec(), c.to_f32_vec());
    // scale 7.5: u + 7.5·(c − u)
    let g = guidance(&be, &u, &c, 7.5).unwrap().to_f32_vec();
    for ((g, u), c) in g.iter().zip(u.to_f32_vec()).zip(c.to_f32_vec()) {
        let want = u + 7.5 * (c - u);
        assert!(
            (g - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{g} vs {want}"
        );
    }
}

// ---------------------------------------------------------------- the tiny model

struct Tiny {
    be: CpuBackend,
    unet: Unet,
    vae: Vae,
    te: TextEncoders,
    lora: LoraSet,
}

fn tiny() -> &'static Tiny {
    static T: OnceLock<Tiny> = OnceLock::new();
    T.get_or_init(|| {
        let be = CpuBackend::new();
        let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
        let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
        let vae = Vae::load(&ck.vae.0, &ck.vae.1, &be, "vae").unwrap();
        let te = TextEncoders::Clip(Box::new(
            ClipTextModel::load(&ck.text_encoder.0, &ck.text_encoder.1, &be, "text_encoder")
                .unwrap(),
        ));
        let lora = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F32).unwrap();
        Tiny {
            be,
            unet,
            vae,
            te,
            lora,
        }
    })
}

/// CLIP's tokenizer with its ids folded into the tiny model's 512-token vocabulary
/// (BOS, EOS → 510, 511 like the fixture; other ids modulo 510).
fn toy_ids(text: &str) -> Vec<u32> {
    static CLIP: OnceLock<Tokenizer> = OnceLock::new();
    CLIP.get_or_init(|| Tokenizer::new().unwrap())
        .encode(text)
        .ids
        .into_iter()
        .map(|id| match id {
            BOS => 510,
            EOS => 511,
            id => id % 510,
        })
        .collect()
}

fn spec(prompt: &str, seed: u64) -> PromptSpec {
    PromptSpec {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        seed: Some(seed),
        steps: 4,
        cfg_scale: 7.5,
        sampler: SamplerKind::Ddim,
        notes: vec![],
    }
}

fn run(spec: &PromptSpec, lora: bool) -> Result<Generated, SampleError> {
    let t = tiny();
    let tok = toy_ids;
    let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &tok);
    let cx = Ctx::new(&t.be, lora.then_some(&t.lora));
    generate(&pipe, &cx, spec, 1, None)
}

#[test]
fn generate_on_the_tiny_model() {
    let s = spec("a photo of a cat", 42);
    let mut steps = Vec::new();
    let t = tiny();
    let tok = toy_ids;
    let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &tok);
    assert_eq!(pipe.size_multiple(), 64);
    let cx = Ctx::new(&t.be, None);
    let a = generate(&pipe, &cx, &s, 1, Some(&mut |i, n| steps.push((i, n)))).unwrap();
    assert_eq!(steps, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!((a.image.width, a.image.height), (64, 64));
    assert_eq!(a.image.data.len(), 64 * 64 * 3);
    assert_eq!(a.seed, 42);
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    // Not a flat image.
    let first = a.image.data[0];
    assert!(a.image.data.iter().any(|&v| v != first));

    // Deterministic for a seed; another seed, prompt, negative prompt, sampler, clip skip or
    // the LoRA changes it.
    assert_eq!(run(&s, false).unwrap().image, a.image);
    let differs = |what: &str, g: Generated| {
        let diff = g
            .image
            .data
            .iter()
            .zip(&a.image.data)
            .filter(|(x, y)| x != y)
            .count();
        assert!(diff > 100, "{what}: only {diff} bytes differ");
    };
    differs(
        "seed 43",
        run(&spec("a photo of a cat", 43), false).unwrap(),
    );
    differs(
        "prompt",
        run(&spec("a dog in the rain", 42), false).unwrap(),
    );
    differs("LoRA", run(&s, true).unwrap());
    let mut n = s.clone();
    n.negative_prompt = "sharp".into();
    differs("negative prompt", run(&n, false).unwrap());
    let mut e = s.clone();
    e.sampler = SamplerKind::Euler;
    differs("euler", run(&e, false).unwrap());
    differs("clip skip 2", generate(&pipe, &cx, &s, 2, None).unwrap());
    // The LoRA run is deterministic too.
    assert_eq!(run(&s, true).unwrap().image, run(&s, true).unwrap().image);

    // No guidance at cfg ≤ 1: the negative prompt is not used.
    let mut one = s.clone();
    one.cfg_scale = 1.0;
    let g1 = run(&one, false).unwrap();
    one.negative_prompt = "something else entirely".into();
    assert_eq!(run(&one, false).unwrap().image, g1.image);

    // Width and height land where they belong.
    let mut wide = s.clone();
    wide.width = 128;
    wide.sampler = SamplerKind::Euler;
    let g = run(&wide, false).unwrap();
    assert_eq!(
        (g.image.width, g.image.height, g.image.data.len()),
        (128, 64, 128 * 64 * 3)
    );

    // No seed: one is drawn and reported.
    let mut r = s.clone();
    r.seed = None;
    let g = run(&r, false).unwrap();
    assert!(
        g.notes.iter().any(|n| n.contains(&g.seed.to_string())),
        "{:?}",
        g.notes
    );
    r.seed = Some(g.seed);
    assert_eq!(run(&r, false).unwrap().image, g.image);
}

#[test]
fn one_guided_batch_with_scale_one_equals_the_conditional_pass() {
    let t = tiny();
    let tok = toy_ids;
    let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &tok);
    let cx = Ctx::new(&t.be, Some(&t.lora));
    let (both, _) = pipe.encode_prompts(&cx, &["", "a red house"], 1).unwrap();
    let (cond, _) = pipe.encode_prompts(&cx, &["a red house"], 1).unwrap();
    let (both, cond) = (Cond::text_only(both), Cond::text_only(cond));
    let mut rng = lorafuse::rng::Rng::new(5);
    let x: Vec<f32> = rng
        .normal_vec(4 * 8 * 8)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x = Tensor::from_f32([1, 4, 8, 8], x).unwrap();
    let guided = pipe.predict_noise(&cx, &x, 501.0, &both, 1.0).unwrap();
    let plain = pipe.predict_noise(&cx, &x, 501.0, &cond, 1.0).unwrap();
    let (g, p) = (guided.to_f64_vec(), plain.to_f64_vec());
    let d = max_diff(&g, &p);
    assert!(
        d < 1e-6,
        "batch-of-2 cond half differs from the single pass by {d}"
    );
    // And with guidance the result moves away from the conditional prediction.
    let g7 = pipe
        .predict_noise(&cx, &x, 501.0, &both, 7.5)
        .unwrap()
        .to_f64_vec();
    assert!(max_diff(&g7, &p) > 1e-3);
}

#[test]
fn generate_errors_do_not_panic() {
    let t = tiny();
    let msg = |s: &PromptSpec, clip_skip: usize| {
        let tok = toy_ids;
        let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &tok);
        let cx = Ctx::new(&t.be, None);
        generate(&pipe, &cx, s, clip_skip, None)
            .unwrap_err()
            .to_string()
    };
    let base = spec("p", 1);
    let mut s = base.clone();
    s.width = 96;
    assert!(msg(&s, 1).contains("width = 96") && msg(&s, 1).contains("multiple of 64"));
    s.width = 0;
    assert!(msg(&s, 1).contains("width = 0"));
    let mut s = base.clone();
    s.height = 8192;
    assert!(msg(&s, 1).contains("height = 8192"));
    let mut s = base.clone();
    s.steps = 0;
    assert!(msg(&s, 1).contains("steps = 0"));
    let mut s = base.clone();
    s.cfg_scale = f64::INFINITY;
    assert!(msg(&s, 1).contains("cfg_scale"));
    assert!(msg(&base, 0).contains("clip_skip"));
    assert!(msg(&base, 9).contains("clip_skip"));

    // Real CLIP ids (49406, …) are outside the tiny model's vocabulary.
    let clip = Tokenizer::new().unwrap();
    let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &clip);
    let e = generate(&pipe, &Ctx::new(&t.be, None), &base, 1, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token id") && e.contains("512"), "{e}");
    // A tokenizer that returns nothing, or too much.
    for bad in [0usize, 78] {
        let tok = move |_: &str| vec![1u32; bad];
        let pipe = Pipeline::new(&t.unet, &t.vae, &t.te, &tok);
        let e = generate(&pipe, &Ctx::new(&t.be, None), &base, 1, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token ids"), "{e}");
    }
}

// ---------------------------------------------------------------- images

#[test]
fn planar_to_rgb_maps_and_clamps() {
    // One pixel per value: R plane, G plane, B plane of a 4x1 image.
    let r = [-1.0, 1.0, 0.0, f32::NAN];
    let g = [-5.0, 5.0, 0.5, -0.0];
    let b = [f32::INFINITY, f32::NEG_INFINITY, -0.999, 0.999];
    let chw: Vec<f32> = r.iter().chain(&g).chain(&b).copied().collect();
    let img = RgbImage::from_planar(4, 1, &chw).unwrap();
    assert_eq!(img.pixel(0, 0), Some([0, 0, 255]));
    assert_eq!(img.pixel(1, 0), Some([255, 255, 0]));
    // 0 → 127.5 → 128 (half to even); 0.5 → 191.25 → 191; -0.999 → 0.1275 → 0
    assert_eq!(img.pixel(2, 0), Some([128, 191, 0]));
    assert_eq!(img.pixel(3, 0), Some([0, 128, 255]));
    assert_eq!(img.pixel(4, 0), None);
    assert!(RgbImage::from_planar(4, 2, &chw).is_err());
    assert!(RgbImage::from_planar(usize::MAX, 3, &chw).is_err());
}

#[test]
fn png_round_trip() {
    let dir = std::env::temp_dir().join(format!("lorafuse-sample-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (w, h) = (7, 5);
    let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
    let img = RgbImage {
        width: w,
        height: h,
        data,
    };
    let path = dir.join("x.png");
    save_png(&path, &img).unwrap();
    assert_eq!(load_png(&path).unwrap(), img);
    // Overwrite in place; no temporary file is left behind.
    let mut img2 = img.clone();
    img2.data[0] = 255 - img2.data[0];
    save_png(&path, &img2).unwrap();
    assert_eq!(load_png(&path).unwrap(), img2);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("x.png")]);

    // Errors, not panics.
    let bad = RgbImage {
        width: 2,
        height: 2,
        data: vec![0; 5],
    };
    assert!(save_png(dir.join("bad.png"), &bad).is_err());
    let empty = RgbImage {
        width: 0,
        height: 0,
        data: vec![],
    };
    assert!(save_png(dir.join("empty.png"), &empty).is_err());
    let e = save_png(dir.join("no/such/dir/x.png"), &img).unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
    std::fs::write(dir.join("junk.png"), b"not a png").unwrap();
    assert!(load_png(dir.join("junk.png")).is_err());
    assert!(load_png(dir.join("missing.png")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// v-prediction sampling: the ε made from v makes every sampler's x₀ diffusers'
/// v_prediction x₀ = √ᾱ·x − √(1−ᾱ)·v, with ᾱ = 1/(σ_i²+1) at Euler's fractional timesteps and
/// ᾱ_t at DDIM's.
#[test]
fn v_prediction_becomes_the_noise_prediction_of_the_same_x0() {
    let be = CpuBackend::new();
    let schedule = NoiseSchedule::sd15();
    let x = Tensor::from_f32([1, 2, 1, 2], vec![0.3, -1.2, 0.7, 2.0]).unwrap();
    let v = Tensor::from_f32([1, 2, 1, 2], vec![-0.5, 0.25, 1.5, -0.75]).unwrap();
    let cfg = SamplerConfig::sd15();
    let euler = Sampler::new(SamplerKind::Euler, &schedule, &cfg, 7).unwrap();
    let ddim = Sampler::new(SamplerKind::Ddim, &schedule, &cfg, 7).unwrap();
    let mut cases: Vec<(f64, f64)> = euler
        .timesteps()
        .iter()
        .zip(euler.sigmas())
        .map(|(&t, &s)| (t, 1.0 / (s * s + 1.0)))
        .collect();
    cases.extend(
        ddim.timesteps()
            .iter()
            .map(|&t| (t, schedule.alpha_bar(t as usize).unwrap())),
    );
    for (t, abar) in cases {
        let eps = v_to_eps(&be, &schedule, &x, t, &v).unwrap().to_f64_vec();
        let (a, s) = (abar.sqrt(), (1.0 - abar).sqrt());
        for ((xi, vi), ei) in x.to_f64_vec().iter().zip(v.to_f64_vec()).zip(eps) {
            let x0 = (xi - s * ei) / a;
            let want = a * xi - s * vi;
            assert!(
                (x0 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "t {t}: {x0} vs {want}"
            );
        }
    }
}
