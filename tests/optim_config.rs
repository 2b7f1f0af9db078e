//! `optimizer_type` and `optimizer_args`: kohya's names in any case, each argument checked per
//! optimizer and named in the error, and learning rates ≥ 1 only for Prodigy.

use lorafuse::config::{ConfigError, TrainConfig};
use lorafuse::train::optim::{OptimizerKind, OptimizerType};
use lorafuse::train::trainable::optimizer_kind;

const REQUIRED: &str =
    "train_data_dir: data\nbase_model: sd15.safetensors\noutput_dir: out/my_lora\n";

fn with(extra: &str) -> Result<TrainConfig, ConfigError> {
    TrainConfig::from_yaml(
        &format!("{REQUIRED}{extra}\n"),
        "config.yaml",
        &[] as &[&str],
    )
}

fn err_text(extra: &str) -> String {
    match with(extra) {
        Ok(_) => panic!("expected an error for {extra:?}"),
        Err(e) => e.to_string(),
    }
}

fn kind(extra: &str) -> OptimizerKind {
    optimizer_kind(&with(extra).unwrap()).unwrap()
}

#[test]
fn kohya_names_in_any_case() {
    for (line, want) in [
        ("optimizer_type: AdamW", OptimizerType::AdamW),
        ("optimizer_type: lion", OptimizerType::Lion),
        ("optimizer_type: PRODIGY", OptimizerType::Prodigy),
        ("optimizer_type: sgdnesterov", OptimizerType::SGDNesterov),
    ] {
        assert_eq!(with(line).unwrap().optimizer_type, want, "{line}");
    }
    assert!(matches!(kind(""), OptimizerKind::AdamW(_)));
}

#[test]
fn arguments_override_the_keys_and_the_defaults() {
    let OptimizerKind::AdamW(s) =
        kind("weight_decay: 0.05\noptimizer_args: [\"betas=0.8,0.95\", \"eps=1e-6\"]")
    else {
        panic!()
    };
    assert_eq!(
        (s.beta1, s.beta2, s.eps, s.weight_decay),
        (0.8, 0.95, 1e-6, 0.05)
    );

    // Lion's and Prodigy's weight decay is their reference's (0) unless weight_decay is written.
    let OptimizerKind::Lion(s) = kind("optimizer_type: Lion") else {
        panic!()
    };
    assert_eq!((s.beta1, s.beta2, s.weight_decay), (0.9, 0.99, 0.0));
    let OptimizerKind::Lion(s) = kind("optimizer_type: Lion\nweight_decay: 0.1") else {
        panic!()
    };
    assert_eq!(s.weight_decay, 0.1);

    // kohya's command-line form: one text, arguments separated by spaces.
    let OptimizerKind::Prodigy(s) = kind(
        "optimizer_type: Prodigy\nlearning_rate: 1\noptimizer_args: \"d_coef=2 use_bias_correction=True safeguard_warmup=true weight_decay=0.01 growth_rate=inf\"",
    ) else {
        panic!()
    };
    assert_eq!(s.d_coef, 2.0);
    assert!(s.use_bias_correction && s.safeguard_warmup && s.decouple);
    assert_eq!((s.weight_decay, s.growth_rate), (0.01, f64::INFINITY));

    let OptimizerKind::SgdNesterov(s) = kind("optimizer_type: SGDNesterov") else {
        panic!()
    };
    assert_eq!((s.momentum, s.weight_decay), (0.9, 0.0));
}

#[test]
fn bad_arguments_are_named() {
    for (extra, want) in [
        (
            "optimizer_args: [\"d_coef=2\"]",
            "argument `d_coef=2` is not valid: AdamW has no argument `d_coef` in lorafuse (it takes betas, eps, weight_decay)",
        ),
        (
            "optimizer_type: Prodigy\noptimizer_args: [\"d_coef=abc\"]",
            "argument `d_coef=abc` is not valid: d_coef must be a number > 0 and ≤ 100",
        ),
        (
            "optimizer_type: Lion\noptimizer_args: [\"betas=0.9,1.5\"]",
            "argument `betas=0.9,1.5` is not valid: betas must be two numbers in [0, 1)",
        ),
        (
            "optimizer_type: Prodigy\noptimizer_args: [\"safeguard_warmup=maybe\"]",
            "safeguard_warmup must be True or False",
        ),
        (
            "optimizer_args: [\"weight_decay\"]",
            "argument `weight_decay` is not valid: write name=value",
        ),
        (
            "optimizer_type: SGDNesterov\noptimizer_args: [\"momentum=0\"]",
            "argument `momentum=0` is not valid: momentum must be a number > 0 and < 1",
        ),
    ] {
        let text = err_text(extra);
        assert!(text.contains("optimizer_args"), "{extra}: {text}");
        assert!(text.contains(want), "{extra}: {text}");
    }
}

#[test]
fn unknown_types_get_a_hint() {
    let text = err_text("optimizer_type: Adam");
    assert!(text.contains("did you mean `AdamW`"), "{text}");
}

#[test]
fn learning_rates_of_one_are_for_prodigy() {
    let c = with("optimizer_type: Prodigy\nlearning_rate: 1.0").unwrap();
    assert_eq!((c.learning_rate, c.unet_lr), (1.0, 1.0));
    let text = err_text("learning_rate: 1.0");
    assert!(
        text.contains("learning_rate = 1.0 is out of range: must be > 0 and < 1")
            && text.contains("optimizer_type: Prodigy"),
        "{text}"
    );
    let text = err_text("unet_lr: 2");
    assert!(text.contains("unet_lr = 2 is out of range"), "{text}");
}

#[test]
fn polynomial_power_is_read_and_warned_about_elsewhere() {
    let c = with("lr_scheduler: polynomial\nlr_scheduler_power: 2").unwrap();
    assert_eq!(c.lr_scheduler_power, 2.0);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = with("lr_scheduler: cosine\nlr_scheduler_power: 2").unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("lr_scheduler_power = 2 has no effect")),
        "{:?}",
        c.warnings()
    );
    let text = err_text("lr_scheduler_power: 0");
    assert!(
        text.contains("lr_scheduler_power = 0 is out of range"),
        "{text}"
    );
}

#[test]
fn eight_bit_types_take_their_f32_twins_arguments() {
    use lorafuse::train::optim::{AdamWSettings, LionSettings, OptimizerKind, OptimizerType};
    let c = with(
        "optimizer_type: adamw8bit\noptimizer_args: [\"betas=0.9,0.99\", \"weight_decay=0.1\"]",
    )
    .unwrap();
    assert_eq!(c.optimizer_type, OptimizerType::AdamW8bit);
    let kind = lorafuse::train::trainable::optimizer_kind(&c).unwrap();
    assert_eq!(
        kind,
        OptimizerKind::AdamW8bit(AdamWSettings {
            beta2: 0.99,
            weight_decay: 0.1,
            ..AdamWSettings::default()
        })
    );
    let c = with("optimizer_type: Lion8bit").unwrap();
    let kind = lorafuse::train::trainable::optimizer_kind(&c).unwrap();
    assert_eq!(kind, OptimizerKind::Lion8bit(LionSettings::default()));
    for (extra, want) in [
        (
            "optimizer_type: AdamW8bit\noptimizer_args: [\"min_8bit_size=16\"]",
            "AdamW8bit has no argument `min_8bit_size` in lorafuse (it takes betas, eps, weight_decay)",
        ),
        (
            "optimizer_type: Lion8bit\noptimizer_args: [\"betas=0.9\"]",
            "argument `betas=0.9` is not valid: betas must be two numbers",
        ),
    ] {
        let text = err_text(extra);
        assert!(text.contains(want), "{extra}: {text}");
    }
}

#[test]
fn dadapt_adam_takes_dadaptations_arguments() {
    use lorafuse::train::optim::{DAdaptSettings, OptimizerKind};
    let c = with("optimizer_type: DAdaptAdam\nlearning_rate: 1\noptimizer_args: [\"decouple=True\", \"use_bias_correction=True\", \"d0=1e-5\", \"growth_rate=1.02\", \"weight_decay=0.01\", \"log_every=5\"]").unwrap();
    let kind = lorafuse::train::trainable::optimizer_kind(&c).unwrap();
    assert_eq!(
        kind,
        OptimizerKind::DAdaptAdam(DAdaptSettings {
            decouple: true,
            use_bias_correction: true,
            d0: 1e-5,
            growth_rate: 1.02,
            weight_decay: 0.01,
            ..DAdaptSettings::default()
        })
    );
    for (arg, want) in [
        (
            "log_every=1.5",
            "argument `log_every=1.5` is not valid: log_every must be a whole number ≥ 0",
        ),
        (
            "d0=0",
            "argument `d0=0` is not valid: d0 must be a number > 0 and < 1",
        ),
        (
            "growth_rate=0.5",
            "argument `growth_rate=0.5` is not valid: growth_rate must be a number ≥ 1",
        ),
        (
            "decouple=maybe",
            "argument `decouple=maybe` is not valid: decouple must be True or False",
        ),
        (
            "d_coef=2",
            "DAdaptAdam has no argument `d_coef` in lorafuse",
        ),
    ] {
        let text = err_text(&format!(
            "optimizer_type: DAdaptAdam\nlearning_rate: 1\noptimizer_args: [\"{arg}\"]"
        ));
        assert!(text.contains("optimizer_args"), "{arg}: {text}");
        assert!(text.contains(want), "{arg}: {text}");
    }
}

#[test]
fn min_lr_ratio_is_for_cosine_with_min_lr() {
    let c = with("lr_scheduler: cosine_with_min_lr\nlr_scheduler_min_lr_ratio: 0.1").unwrap();
    assert_eq!(c.lr_scheduler_min_lr_ratio, Some(0.1));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let text = err_text("lr_scheduler: cosine_with_min_lr");
    assert!(
        text.contains("lr_scheduler") && text.contains("needs lr_scheduler_min_lr_ratio"),
        "{text}"
    );
    let c = with("lr_scheduler: cosine\nlr_scheduler_min_lr_ratio: 0.1").unwrap();
    assert!(
        c.warnings().iter().any(|w| w
            .contains("lr_scheduler_min_lr_ratio = 0.1 has no effect unless lr_scheduler = cosine_with_min_lr")),
        "{:?}",
        c.warnings()
    );
    let text = err_text("lr_scheduler: cosine_with_min_lr\nlr_scheduler_min_lr_ratio: 1.5");
    assert!(
        text.contains("lr_scheduler_min_lr_ratio = 1.5 is out of range"),
        "{text}"
    );
}

#[test]
fn adafactor_takes_transformers_arguments_with_kohyas_defaults() {
    use lorafuse::train::optim::AdafactorSettings;
    // kohya: relative_step True unless written; transformers' other defaults.
    let OptimizerKind::Adafactor(s) = kind("optimizer_type: Adafactor") else {
        panic!()
    };
    assert_eq!(s, AdafactorSettings::default());
    assert!(s.relative_step && s.scale_parameter && !s.warmup_init && s.beta1.is_none());
    assert_eq!(
        (s.eps1, s.eps2, s.clip_threshold, s.decay_rate),
        (1e-30, 1e-3, 1.0, -0.8)
    );
    let OptimizerKind::Adafactor(s) = kind(
        "optimizer_type: adafactor\nlearning_rate: 1e-4\noptimizer_args: [\"scale_parameter=False\", \"relative_step=False\", \"warmup_init=False\", \"eps=(1e-29,1e-2)\", \"clip_threshold=0.5\", \"decay_rate=-0.5\", \"beta1=0.9\", \"weight_decay=0.01\"]",
    ) else {
        panic!()
    };
    assert_eq!(
        s,
        AdafactorSettings {
            eps1: 1e-29,
            eps2: 1e-2,
            clip_threshold: 0.5,
            decay_rate: -0.5,
            beta1: Some(0.9),
            weight_decay: 0.01,
            scale_parameter: false,
            relative_step: false,
            warmup_init: false,
        }
    );
    let OptimizerKind::Adafactor(s) =
        kind("optimizer_type: Adafactor\noptimizer_args: [\"beta1=None\"]")
    else {
        panic!()
    };
    assert_eq!(s.beta1, None);
    // kohya turns relative_step on for warmup_init, and says so.
    let c = with(
        "optimizer_type: Adafactor\nlr_scheduler: adafactor\noptimizer_args: [\"relative_step=False\", \"warmup_init=True\"]",
    )
    .unwrap();
    let OptimizerKind::Adafactor(s) = optimizer_kind(&c).unwrap() else {
        panic!()
    };
    assert!(s.relative_step && s.warmup_init);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("warmup_init=True needs relative_step")),
        "{:?}",
        c.warnings()
    );
    for (arg, want) in [
        (
            "eps=1e-30",
            "argument `eps=1e-30` is not valid: eps must be two numbers > 0 and < 1",
        ),
        (
            "clip_threshold=0",
            "argument `clip_threshold=0` is not valid: clip_threshold must be a number > 0",
        ),
        (
            "decay_rate=0.8",
            "argument `decay_rate=0.8` is not valid: decay_rate must be a number in [-1, 0]",
        ),
        (
            "beta1=1.5",
            "argument `beta1=1.5` is not valid: beta1 must be a number in [0, 1), or None",
        ),
        (
            "relative_step=yes",
            "argument `relative_step=yes` is not valid: relative_step must be True or False",
        ),
        (
            "betas=0.9,0.99",
            "Adafactor has no argument `betas` in lorafuse (it takes eps, clip_threshold, decay_rate, beta1, weight_decay, scale_parameter, relative_step, warmup_init)",
        ),
    ] {
        let text = err_text(&format!(
            "optimizer_type: Adafactor\nlr_scheduler: adafactor\noptimizer_args: [\"{arg}\"]"
        ));
        assert!(text.contains("optimizer_args"), "{arg}: {text}");
        assert!(text.contains(want), "{arg}: {text}");
    }
}

#[test]
fn adafactor_with_relative_step_sets_its_own_rate_and_schedule() {
    use lorafuse::train::lr::Schedule;
    use lorafuse::train::trainable::lr_scheduler;
    // The schedule is replaced (with a notice), the rate not used (not even checked < 1),
    // unet_lr / text_encoder_lr ignored with a notice, as kohya's get_optimizer does.
    let c = with(
        "optimizer_type: Adafactor\nlr_scheduler: constant\nlearning_rate: 1.0\nunet_lr: 1e-4",
    )
    .unwrap();
    assert_eq!(lr_scheduler(&c), Schedule::Adafactor);
    let w = c.warnings();
    assert!(
        w.iter().any(|w| w.contains(
            "lr_scheduler = constant is replaced by adafactor and learning_rate is not used"
        )),
        "{w:?}"
    );
    assert!(w.iter().any(|w| w.contains("unet_lr ignored")), "{w:?}");
    let c = with("optimizer_type: Adafactor\nlr_scheduler: adafactor").unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // Without relative_step the configured schedule stays, and so does the rate's check.
    let c = with(
        "optimizer_type: Adafactor\nlr_scheduler: constant_with_warmup\nnum_warmup_steps: 10\noptimizer_args: [\"relative_step=False\"]",
    )
    .unwrap();
    assert_eq!(lr_scheduler(&c), Schedule::ConstantWithWarmup);
    // kohya's advice then: max_grad_norm 0 (lorafuse's default is 1), constant_with_warmup,
    // clip_threshold 1.0.
    assert_eq!(
        c.warnings(),
        ["Adafactor: max_grad_norm = 1 clips the gradient as well; kohya suggests 0"]
    );
    let c = with(
        "optimizer_type: Adafactor
max_grad_norm: 0
lr_scheduler: cosine
optimizer_args: [\"relative_step=False\", \"clip_threshold=2\"]",
    )
    .unwrap();
    assert_eq!(
        c.warnings(),
        [
            "Adafactor: lr_scheduler = cosine; kohya suggests constant_with_warmup",
            "Adafactor: clip_threshold = 2; kohya suggests 1.0"
        ]
    );
    let text = err_text(
        "optimizer_type: Adafactor\nlearning_rate: 1.0\noptimizer_args: [\"relative_step=False\"]",
    );
    assert!(
        text.contains("learning_rate = 1.0 is out of range"),
        "{text}"
    );
    // kohya refuses a warm-up with Adafactor's own schedule, and the adafactor schedule
    // without Adafactor's relative_step.
    let text = err_text("optimizer_type: Adafactor\nnum_warmup_steps: 10");
    assert!(
        text.contains("num_warmup_steps") && text.contains("takes no warmup"),
        "{text}"
    );
    for extra in [
        "lr_scheduler: adafactor",
        "optimizer_type: Adafactor\nlr_scheduler: adafactor\noptimizer_args: [\"relative_step=False\"]",
    ] {
        let text = err_text(extra);
        assert!(
            text.contains("lr_scheduler") && text.contains("it needs optimizer_type: Adafactor with relative_step=True"),
            "{extra}: {text}"
        );
    }
}

#[test]
fn warmup_stable_decay_reads_lr_decay_steps() {
    let c = with(
        "lr_scheduler: warmup_stable_decay\nnum_warmup_steps: 0.1\nlr_decay_steps: 0.2\nlr_scheduler_min_lr_ratio: 0.1\nlr_scheduler_num_cycles: 2\nmax_train_steps: 100",
    )
    .unwrap();
    assert_eq!(c.lr_decay_steps.steps(100), 20);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = with("lr_scheduler: warmup_stable_decay\nlr_decay_steps: 30").unwrap();
    assert_eq!(c.lr_decay_steps.steps(100), 30);
    let c = with("lr_scheduler: cosine\nlr_decay_steps: 30").unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains(
            "lr_decay_steps = 30 has no effect unless lr_scheduler = warmup_stable_decay"
        )),
        "{:?}",
        c.warnings()
    );
    let text = err_text(
        "lr_scheduler: warmup_stable_decay\nnum_warmup_steps: 60\nlr_decay_steps: 50\nmax_train_steps: 100",
    );
    assert!(
        text.contains("lr_decay_steps") && text.contains("longer than the run"),
        "{text}"
    );
    let text = err_text("lr_scheduler: warmup_stable_decay\nlr_decay_steps: -3");
    assert!(text.contains("lr_decay_steps"), "{text}");
}
