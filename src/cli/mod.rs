//! The command line: what each subcommand reads, what it calls in the library, and what it
//! prints. Errors come back typed ([`CliError`]); main prints one message and picks the exit
//! code from it. Results go to standard output through [`Out`], notes and progress to stderr.

mod caption;
mod error;
mod gpus;
pub mod interrupt;
mod plan;
mod prepare;
pub mod progress;
mod serve;
mod tags;
mod tools;

pub use error::{CliError, Out, Outcome};

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use lorafuse::backend::cpu::alloc::keep_freed_memory_for;
use lorafuse::backend::cpu::CpuPrecision;
use lorafuse::backend::select::{select, Selected};
use lorafuse::config::{Device, MixedPrecision, TrainConfig};
use lorafuse::dist::launch::WorldEnv;
use lorafuse::lora::family::check_lora_fits;
use lorafuse::lora::{kohya, LoraSet};
use lorafuse::model::family::{family_of, ModelFamily, Prediction, WeightsFrom};
use lorafuse::model::layers::Ctx;
use lorafuse::model::tokenizer::Tokenizer;
use lorafuse::prepare::auto::auto_prepare;
use lorafuse::sample::{generate, parse_prompt_line, save_png, Pipeline, PromptDefaults};
use lorafuse::train::trainer::{train, TrainReport};
use lorafuse::{Backend, CpuBackend, DType};

/// `--device` of `sample` and `caption`: the values of the config key `device`.
pub(crate) fn parse_device(word: &str) -> Result<Device, String> {
    Device::parse(word).ok_or_else(|| format!("expected one of {}", Device::CHOICES.join(", ")))
}

#[derive(Parser)]
#[command(name = "lorafuse", version, about = "LoRA trainer for Stable Diffusion 1.x, 2.x and SDXL", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a LoRA as a config file says (keys as in kohya's tools; see the README).
    Train {
        /// The config file: lorafuse's YAML, or a kohya sd-scripts / lora-scripts TOML.
        config: PathBuf,
        /// Continue the run saved in output_dir (after Ctrl-C or a crash), or in DIR: the
        /// output folder of that run.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        resume: Option<Option<PathBuf>>,
        /// Override a config key, e.g. --set learning_rate=5e-4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Train data-parallel on these GPUs, one worker process each (e.g. 0,1,2,3):
        /// batch_size is per GPU, so a step takes GPUs × batch_size × accumulation images.
        /// Workers started by torchrun or srun need no flag (RANK, WORLD_SIZE, MASTER_ADDR,
        /// MASTER_PORT are read from the environment).
        #[arg(long, value_name = "LIST")]
        gpus: Option<String>,
    },
    /// Make a tiny model and a synthetic data set, and train a LoRA on them (about a minute
    /// on a laptop CPU).
    Demo {
        /// Where to put the model, the data, the config and the results.
        #[arg(long, default_value = "lorafuse-demo")]
        dir: PathBuf,
        /// Optimizer steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
    },
    /// Generate an image from a prompt line (kohya syntax: "a cat --n blurry --w 512 --h 512
    /// --d 42 --s 30 --l 7.5 --ss euler").
    Sample {
        /// The SD1.x or SD2.x model: a .safetensors file or a diffusers folder.
        #[arg(long)]
        model: PathBuf,
        /// A LoRA to apply, optionally with a weight: --lora style.safetensors:0.7 (repeatable).
        #[arg(long = "lora", value_name = "FILE[:WEIGHT]")]
        loras: Vec<String>,
        /// Output PNG.
        #[arg(long, default_value = "sample.png")]
        out: PathBuf,
        /// CLIP skip (1 = the last layer).
        #[arg(long, default_value_t = 1)]
        clip_skip: usize,
        /// The model predicts v (SD2.x 768-v, as kohya's v_parameterization): a single file
        /// does not say so (a diffusers folder's scheduler config does).
        #[arg(long)]
        v_parameterization: bool,
        /// Where to compute, as the config key `device`: auto (a CUDA GPU when this build and
        /// the machine have one, else the CPU), cpu, cuda or cuda:N. On a GPU in f32.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        device: Device,
        /// The prompt line.
        prompt: String,
    },
    /// Bake LoRAs into a single-file checkpoint (W + ratio·scale·up·down), or without --model
    /// merge LoRAs into one LoRA (ranks stacked, or SVD to --new-rank).
    ///
    /// Runs on the CPU (there is no --device): it streams the checkpoint from disk and adds
    /// the LoRA products in f64, one weight at a time, which the disk, not the compute, bounds.
    Merge {
        /// The base checkpoint: a single .safetensors file with LDM key names (SD1.x, SD2.x) or
        /// SGM's (SDXL); a diffusers folder is refused: merge into the single-file version of
        /// the model. Without it the LoRAs are merged into one LoRA.
        #[arg(long)]
        model: Option<PathBuf>,
        /// A LoRA and its ratio, e.g. --lora style.safetensors:0.8 (repeatable).
        #[arg(long = "lora", value_name = "FILE[:RATIO]", required = true)]
        loras: Vec<String>,
        /// The ratios of the --lora files, in order (instead of FILE:RATIO), e.g. --ratios 0.7 0.5.
        #[arg(long, num_args = 1.., value_name = "RATIO", allow_negative_numbers = true)]
        ratios: Vec<f64>,
        /// The merged checkpoint or LoRA to write.
        #[arg(long)]
        out: PathBuf,
        /// Store every float tensor in this precision (fp16, fp32, bf16); default: as the base
        /// (a merged LoRA: fp32).
        #[arg(long)]
        precision: Option<String>,
        /// LoRA into LoRA: the rank of the result, by SVD of each module's summed product
        /// (sd-scripts' svd_merge_lora.py); default: ranks stacked, exact.
        #[arg(long)]
        new_rank: Option<usize>,
        /// With --new-rank: the rank of the 3x3 conv (LoCon) modules; default: --new-rank.
        #[arg(long)]
        new_conv_rank: Option<usize>,
        /// With --new-rank: clamp up and down to ± this quantile of their entries.
        #[arg(long, default_value_t = 0.99)]
        clamp_quantile: f64,
        /// With --new-rank: do not clamp.
        #[arg(long)]
        no_clamp: bool,
    },
    /// Resize a LoRA to a lower rank (sd-scripts' resize_lora.py): per module the best
    /// approximation of up·down of that rank (SVD in f64), alpha scaled so alpha/rank is kept.
    Resize {
        /// The LoRA to resize (kohya format, .safetensors).
        input: PathBuf,
        /// The resized LoRA to write.
        output: PathBuf,
        /// The new rank; with --dynamic-method, the largest rank a module may get.
        #[arg(long)]
        new_rank: usize,
        /// The new rank of the 3x3 conv (LoCon) modules; default: --new-rank.
        #[arg(long)]
        new_conv_rank: Option<usize>,
        /// Pick each module's rank from its singular values S: sv_ratio (keep those above
        /// S₀/X), sv_fro (keep a share X of the Frobenius norm), sv_cumulative (a share X of ΣS).
        #[arg(long, value_name = "METHOD")]
        dynamic_method: Option<String>,
        /// X of --dynamic-method.
        #[arg(long, value_name = "X")]
        dynamic_param: Option<f64>,
        /// fp16, bf16 or float (fp32, the default).
        #[arg(long)]
        save_precision: Option<String>,
        /// Print per module the retained sum and Frobenius shares of S and S₀/S_last.
        #[arg(long)]
        verbose: bool,
    },
    /// Extract a LoRA from the difference of two checkpoints of one family (SD1.x, SD2.x or
    /// SDXL; sd-scripts' extract_lora_from_models.py): per targeted layer the top singular
    /// triplets of tuned − original; alpha = rank.
    Extract {
        /// The base model: a single .safetensors file or a diffusers folder.
        #[arg(long)]
        original: PathBuf,
        /// The fine-tuned model (either layout).
        #[arg(long)]
        tuned: PathBuf,
        /// The LoRA to write.
        output: PathBuf,
        /// Rank of the linear and 1x1-conv modules.
        #[arg(long)]
        dim: usize,
        /// Rank of the 3x3 convs (LoCon); without it no ResNet/sampler module is extracted.
        #[arg(long)]
        conv_dim: Option<usize>,
        /// Clamp up and down to ± this quantile of their entries.
        #[arg(long, default_value_t = 0.99)]
        clamp_quantile: f64,
        /// Do not clamp (the factors are then exactly the truncated SVD's).
        #[arg(long)]
        no_clamp: bool,
        /// The text encoder is extracted only when a weight differs by more than this.
        #[arg(long, default_value_t = 0.01)]
        min_diff: f64,
        /// fp16, bf16 or float (fp32, the default).
        #[arg(long)]
        save_precision: Option<String>,
        /// The metadata of a v-prediction model (SD2.x 768-v, as kohya's
        /// v_parameterization), which a single file does not say.
        #[arg(long)]
        v_parameterization: bool,
    },
    /// Show what a LoRA file holds: modules and their adapter kinds (LoRA, LoCon, LoHa, DoRA), rank,
    /// alpha, dtype, metadata.
    Inspect {
        /// The LoRA .safetensors file.
        lora: PathBuf,
        /// Also list every module: name, adapter kind (LoRA linear, LoRA 1x1 conv, LoCon 3x3
        /// conv), rank, alpha.
        #[arg(long)]
        modules: bool,
    },
    /// Predict a training config's peak GPU memory without a GPU: the breakdown (weights,
    /// LoRA + optimizer, saved activations by block, workspace, context) and, for a memory
    /// size, the largest batch_size and resolution that fit.
    Plan {
        /// The config file, YAML or kohya TOML (the data folder is read, if it exists, to size
        /// the caches).
        config: PathBuf,
        /// The GPU to plan for: a card ("RTX 3060", "RTX 4090", "A100", ...: its memory and
        /// the launch limits its kernels are chosen for) or a memory size like --gpu-memory.
        #[arg(long, value_name = "CARD|SIZE")]
        gpu: Option<String>,
        /// The GPU's memory, e.g. 8GiB, 12GB, 6144MiB (G/GB/GiB all mean GiB; a bare number is
        /// GiB); with --gpu, overrides the card's. Default: the memory of the GPU this build can
        /// open, else a table of sizes.
        #[arg(long, value_name = "SIZE")]
        gpu_memory: Option<String>,
        /// Override a config key, e.g. --set batch_size=4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The model family planned when base_model does not exist: sd1 (SD1.5's shapes),
        /// sd2 (SD2.1 768-v's) or sdxl (SDXL 1.0 base's). Default: the one a kohya config
        /// names (`sdxl = true`, `v2 = true`, lora-scripts' `model_train_type`), else sd1.
        #[arg(long, value_parser = ["sd1", "sd2", "sdxl"])]
        family: Option<String>,
    },
    /// Make a folder of pictures ready for training: decode (EXIF orientation, alpha on a
    /// background), resize (Lanczos) and crop each to the training resolution or its training
    /// bucket, drop duplicates and too-small images, and copy the captions along.
    Prepare(prepare::PrepareArgs),
    /// The tag editor's jobs on a folder's captions: without edits a frequency table; a
    /// trigger word put first, tags removed or replaced (by name or * pattern), repeats
    /// removed; --dry-run shows each change first.
    Tags(tags::TagsArgs),
    /// Caption a folder of pictures with a WD14 tagger (the ViT v3 taggers' folder:
    /// model.safetensors, config.json, selected_tags.csv: tags above the thresholds) or by
    /// CLIP interrogation (a CLIPModel: the vocabulary phrases nearest the picture), best
    /// first, as .txt sidecars or one metadata CSV; existing captions kept unless --append or
    /// --overwrite.
    Caption(caption::CaptionArgs),
    /// Show the compute backends this build has and which one `device: auto` would pick.
    Devices,
    /// A local web UI: the config as a form with every key's meaning and live validation, the
    /// memory plan for a GPU, start / stop / resume, the loss curve, samples, captions.
    Serve(serve::ServeArgs),
}

pub fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Train {
            config,
            resume,
            set,
            gpus,
        } => match gpus {
            Some(list) if WorldEnv::from_env().ok().flatten().is_none() => {
                let gpus = lorafuse::dist::launch::parse_gpus(&list)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                // The configuration checked, and the data prepared, once here for all workers.
                let mut cfg = TrainConfig::load(&config, &set)?;
                cfg.check_paths()?;
                auto_prepared(&mut cfg)?;
                gpus::launch(&gpus)
            }
            _ => train_cmd(&config, resume, &set),
        },
        Command::Demo { dir, steps } => demo(&dir, steps),
        Command::Sample {
            model,
            loras,
            out,
            clip_skip,
            v_parameterization,
            device,
            prompt,
        } => sample(&SampleArgs {
            model: &model,
            loras: &loras,
            out: &out,
            clip_skip,
            v_parameterization,
            device,
            prompt: &prompt,
        }),
        Command::Merge {
            model,
            loras,
            ratios,
            out,
            precision,
            new_rank,
            new_conv_rank,
            clamp_quantile,
            no_clamp,
        } => {
            let loras = tools::lora_ratios(&loras, &ratios)?;
            match model {
                Some(model) => {
                    if new_rank.is_some() || new_conv_rank.is_some() {
                        return Err(CliError::Usage(
                            "--new-rank and --new-conv-rank are for merging LoRAs into a LoRA \
                             (without --model)"
                                .into(),
                        ));
                    }
                    merge(&model, &loras, &out, precision.as_deref())
                }
                None => tools::merge_loras_cmd(&tools::MergeLorasCmd {
                    loras: &loras,
                    out: &out,
                    precision: precision.as_deref(),
                    new_rank,
                    new_conv_rank,
                    clamp_quantile: (!no_clamp).then_some(clamp_quantile),
                }),
            }
        }
        Command::Resize {
            input,
            output,
            new_rank,
            new_conv_rank,
            dynamic_method,
            dynamic_param,
            save_precision,
            verbose,
        } => tools::resize_cmd(&tools::ResizeCmd {
            input: &input,
            output: &output,
            new_rank,
            new_conv_rank,
            dynamic_method: dynamic_method.as_deref(),
            dynamic_param,
            save_precision: save_precision.as_deref(),
            verbose,
        }),
        Command::Extract {
            original,
            tuned,
            output,
            dim,
            conv_dim,
            clamp_quantile,
            no_clamp,
            min_diff,
            save_precision,
            v_parameterization,
        } => tools::extract_cmd(&tools::ExtractCmd {
            original: &original,
            tuned: &tuned,
            output: &output,
            dim,
            conv_dim,
            clamp_quantile,
            no_clamp,
            min_diff,
            save_precision: save_precision.as_deref(),
            v_parameterization,
        }),
        Command::Inspect { lora, modules } => {
            let summary = lorafuse::lora::inspect::inspect(&lora)?;
            let mut out = Out::new();
            out.line(&summary)?;
            if modules {
                out.text(&summary.module_table())?;
            }
            Ok(())
        }
        Command::Plan {
            config,
            gpu,
            gpu_memory,
            set,
            family,
        } => plan::plan_cmd(
            &config,
            gpu.as_deref(),
            gpu_memory.as_deref(),
            &set,
            family.as_deref(),
        ),
        Command::Prepare(args) => prepare::prepare_cmd(&args),
        Command::Tags(args) => tags::tags_cmd(&args),
        Command::Caption(args) => caption::caption_cmd(&args),
        Command::Devices => devices(),
        Command::Serve(args) => serve::serve_cmd(&args),
    }
}

fn devices() -> Outcome {
    let mut out = Out::new();
    out.line(format_args!(
        "cpu: available ({} threads)",
        rayon::current_num_threads()
    ))?;
    #[cfg(feature = "cuda")]
    match lorafuse::backend::cuda::Device::gpu(0) {
        Ok(dev) => out.line(format_args!("cuda:0: {} (kernels loaded)", dev.describe()))?,
        Err(e) => out.line(format_args!("cuda:0: {e}"))?,
    }
    #[cfg(not(feature = "cuda"))]
    out.line("cuda: not in this build")?;
    match select(Device::Auto, MixedPrecision::No, CpuPrecision::F32) {
        Ok(s) => out.line(s.note),
        Err(e) => out.line(format_args!("device: auto -> {e}")),
    }
}

/// The backend for `device` (see `lorafuse::backend::select`), its choice noted on stderr.
pub(crate) fn backend(
    device: Device,
    mp: MixedPrecision,
    cpu: CpuPrecision,
) -> Result<Box<dyn Backend>, CliError> {
    let Selected { backend, note } = select(device, mp, cpu)?;
    eprintln!("{note}");
    Ok(backend)
}

fn train_cmd(config: &Path, resume: Option<Option<PathBuf>>, set: &[String]) -> Outcome {
    let mut set = set.to_vec();
    if let Some(Some(dir)) = &resume {
        set.push(format!("output_dir={}", dir.display()));
    }
    let resume = resume.is_some();
    let mut cfg = TrainConfig::load(config, &set)?;
    cfg.check_paths()?;
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    auto_prepared(&mut cfg)?;
    if let Some(env) = WorldEnv::from_env().map_err(lorafuse::Error::from)? {
        return match gpus::worker(&cfg, &env, resume)? {
            Some(report) => print_report(&report),
            None => Ok(()),
        };
    }
    // A training run is one job in its own process, so its freed buffers may stay with it
    // until it exits (backend::cpu::alloc).
    keep_freed_memory_for(cfg.cpu_precision);
    let be = backend(cfg.device, cfg.mixed_precision, cfg.cpu_precision)?;
    interrupt::install();
    let mut obs = progress::Progress::new();
    let report = train(&cfg, be.as_ref(), resume, &interrupt::STOP, &mut obs)?;
    print_report(&report)
}

/// `auto_crop` / `auto_caption`: the prepared folder made (or found made: its key file makes
/// a second run skip the work) and trained on.
fn auto_prepared(cfg: &mut TrainConfig) -> Outcome {
    if cfg.auto_crop.is_some() || cfg.auto_caption.is_some() {
        // Captions are computed in f32, whatever the training precision.
        let be = backend(cfg.device, MixedPrecision::No, CpuPrecision::F32)?;
        let meters = [
            prepare::Meter::new("auto_crop"),
            prepare::Meter::new("auto_caption"),
        ];
        let auto = auto_prepare(cfg, be.as_ref(), &|step, done, total| {
            meters[usize::from(step == "auto_caption")].show(done, total)
        })?;
        for note in &auto.notes {
            eprintln!("{}", note.trim_end());
        }
        cfg.train_data_dir = auto.data_dir;
    }
    Ok(())
}

/// What a run did and where its files are; a run that Ctrl-C stopped ends as
/// [`CliError::Interrupted`] (exit code 130) once the state file is named.
fn print_report(r: &TrainReport) -> Outcome {
    eprintln!();
    if let Some(why) = &r.stopped {
        eprintln!("stopped: {why}");
    }
    eprintln!(
        "fixed-noise loss on the training images: {:.5} before, {:.5} after ({:+.1}%)",
        r.train_loss_before,
        r.train_loss_after,
        100.0 * (r.train_loss_after / r.train_loss_before - 1.0)
    );
    if let Some((step, loss)) = r.best_validation {
        eprintln!("best validation loss: {loss:.5} at step {step}");
    }
    if r.skipped_steps > 0 {
        eprintln!("steps skipped for f16 overflow: {}", r.skipped_steps);
    }
    let mut out = Out::new();
    if !r.interrupted {
        out.line(format_args!("LoRA: {}", r.lora_path.display()))?;
    }
    out.line(format_args!("resumable state: {}", r.state_path.display()))?;
    if r.interrupted {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

fn demo(dir: &Path, steps: usize) -> Outcome {
    let t0 = Instant::now();
    eprintln!("lorafuse demo: a tiny random-weight model of SD1.5's topology, 12 synthetic images, {steps} steps on the CPU");
    let files = lorafuse::demo::prepare(dir, steps)?;
    eprintln!("model:  {}", files.model.display());
    eprintln!("data:   {}", files.data.display());
    eprintln!("config: {}", files.config.display());
    let cfg = TrainConfig::load(&files.config, &[] as &[&str])?;
    cfg.check_paths()?;
    keep_freed_memory_for(CpuPrecision::F32);
    let be = CpuBackend::new();
    interrupt::install();
    let mut obs = progress::Progress::new();
    let report = train(&cfg, &be, false, &interrupt::STOP, &mut obs)?;
    print_report(&report)?;
    Out::new().line(format_args!("outputs: {}", files.output.display()))?;
    eprintln!("demo finished in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// "file.safetensors:0.7" -> (file, 0.7); no weight means 1.
fn path_and_weight(arg: &str) -> Result<(PathBuf, f64), CliError> {
    if let Some((p, w)) = arg.rsplit_once(':') {
        if let Ok(w) = w.parse::<f64>() {
            if !w.is_finite() {
                return Err(CliError::Usage(format!(
                    "--lora {arg}: the weight must be a finite number"
                )));
            }
            return Ok((PathBuf::from(p), w));
        }
    }
    Ok((PathBuf::from(arg), 1.0))
}

/// The `--lora FILE[:WEIGHT]` arguments, loaded in f32 on `be`.
/// The `--lora PATH[:WEIGHT]` files, each refused when it was made for another family than
/// the model at `model` (of `family`).
fn load_loras(
    loras: &[String],
    be: &dyn Backend,
    family: &dyn ModelFamily,
    model: &Path,
) -> Result<Vec<(LoraSet, f64)>, CliError> {
    loras
        .iter()
        .map(|a| {
            let (p, w) = path_and_weight(a)?;
            check_lora_fits(&p, family, model)?;
            Ok((kohya::load(&p, be, DType::F32)?, w))
        })
        .collect()
}

/// The arguments of `lorafuse sample`.
struct SampleArgs<'a> {
    model: &'a Path,
    loras: &'a [String],
    out: &'a Path,
    clip_skip: usize,
    v_parameterization: bool,
    device: Device,
    prompt: &'a str,
}

fn sample(a: &SampleArgs) -> Outcome {
    let spec = parse_prompt_line(a.prompt, &PromptDefaults::default())?;
    let be = backend(a.device, MixedPrecision::No, CpuPrecision::F32)?;
    let be = be.as_ref();
    let family = family_of(a.model)?;
    let sets = load_loras(a.loras, be, family, a.model)?;
    let models = family.load(WeightsFrom::Checkpoint(a.model), be, &mut |_| {})?;
    if a.v_parameterization
        && models.prediction_from_checkpoint
        && models.prediction != Prediction::V
    {
        return Err(CliError::Usage(format!(
            "--v-parameterization: {} says it predicts epsilon \
             (scheduler/scheduler_config.json); leave the flag out",
            a.model.display()
        )));
    }
    let (vae, te) = models.sampling_parts()?;
    let refs: Vec<(&LoraSet, f64)> = sets.iter().map(|(s, w)| (s, *w)).collect();
    let combined = if refs.is_empty() {
        None
    } else {
        Some(LoraSet::combine(be, &refs)?)
    };
    let tokenizer = Tokenizer::new()?.padding_with(family.pad_token());
    let mut pipe = Pipeline::new(&models.unet, vae, te, &tokenizer);
    pipe.schedule = family.noise_schedule();
    pipe.prediction = if a.v_parameterization {
        Prediction::V
    } else {
        models.prediction
    };
    let cx = Ctx::new(be, combined.as_ref());
    let mut report = |i: usize, n: usize| eprint!("\rsampling step {i}/{n}");
    let img = generate(&pipe, &cx, &spec, a.clip_skip, Some(&mut report))?;
    eprintln!();
    for n in &img.notes {
        eprintln!("note: {n}");
    }
    save_png(a.out, &img.image)?;
    Out::new().line(format_args!("{} (seed {})", a.out.display(), img.seed))
}

fn merge(model: &Path, loras: &[(PathBuf, f64)], out: &Path, precision: Option<&str>) -> Outcome {
    let precision = tools::parse_precision("--precision", precision)?;
    // The LoRAs are only read (to f64, a weight at a time): the CPU backend holds them.
    let be = CpuBackend::new();
    let family = family_of(model)?;
    let sets = loras
        .iter()
        .map(|(p, w)| {
            check_lora_fits(p, family, model)?;
            Ok((kohya::load(p, &be, DType::F32)?, *w))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let refs: Vec<(&LoraSet, f64)> = sets.iter().map(|(s, w)| (s, *w)).collect();
    let report = lorafuse::lora::merge::merge_into_checkpoint(model, &refs, out, precision)?;
    Out::new().line(report)
}
