//! The shape of a key declaration, and the macro that turns the table in keys.rs into
//! everything else: the fields of [`TrainConfig`](super::TrainConfig), the typed reader with
//! its defaults, the per-key range checks, the effective configuration and the README.md
//! table.
//!
//! One entry of the table:
//!
//! ```text
//! /// Meaning, one line of README.md (also the field's doc).
//! lora_rank: usize = fixed(32),          field name = YAML key, field type, default
//!     read parse::count,                 Value -> type (kind errors: "is not valid: <rule>")
//!     check |r| (1..=1024).contains(r),  the allowed range ("is out of range: <rule>")
//!     doc_type "whole number 1–1024",    README's type column
//!     rule "must be a whole number ...", the rule every message about the key quotes
//!     aliases ["network_dim", "rank"],   other trainers' names, answered with ours
//!     kohya "4",                         kohya's default (YAML text), where it differs from
//!                                        ours: used when a kohya-format file leaves the key out
//!     verbatim: true,                    a `--set` value is taken as written (paths, names)
//! ```
//!
//! Defaults: `required("what it is")`, `optional("README text")` (an `Option` field, `None`
//! when left out), `fixed(value)` or `fixed(value, "README text")`, and `follows("README
//! text", expression)` for a default computed from keys declared above it (`lora_alpha`
//! follows `lora_rank`). A following key is range-checked only when written or changed in
//! code, so one bad value is one error.

/// One key, as the messages and README.md describe it.
pub(crate) struct KeyDecl {
    pub name: &'static str,
    /// README's type column.
    pub doc_type: String,
    /// README's default column.
    pub default_doc: String,
    /// What a valid value is, in the words of an error message ("must be ...").
    pub rule: String,
    /// README's meaning column, one line.
    pub doc: &'static str,
    /// Other trainers' names for this key, and what differs besides the name (or "").
    pub aliases: &'static [(&'static str, &'static str)],
    /// kohya's default where it differs from lorafuse's, as YAML text: the value of a key a
    /// kohya-format (TOML) file leaves out.
    pub kohya_default: Option<&'static str>,
    /// A `--set` value for this key is taken as written (paths and names), not read as YAML.
    pub verbatim: bool,
    /// For a key without a default: what it is, for "missing required key".
    pub required: Option<&'static str>,
}

/// Runs a range check with the field's type known to the closure.
pub(crate) fn holds<T: ?Sized>(value: &T, check: impl Fn(&T) -> bool) -> bool {
    check(value)
}

macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $kind:ident($($default:tt)*),
        read $read:expr,
        $(check $check:expr,)?
        doc_type $doc_type:expr,
        rule $rule:expr,
        $(aliases [$($alias:literal $(: $note:literal)?),* $(,)?],)?
        $(kohya $kohya:literal,)?
        $(verbatim: $verbatim:literal,)?
    )*) => {
        /// Every training setting, with defaults filled in and derived defaults resolved
        /// (`lora_alpha` is a number even when the file left it out). Field names are the
        /// YAML keys; each is declared once, in src/config/keys.rs.
        #[derive(Clone, Debug, PartialEq)]
        pub struct TrainConfig {
            $(
                $(#[doc = $doc])+
                pub $name: $ty,
            )*
            /// Where each value came from, for error messages. Not part of the
            /// configuration's value: two configs compare equal whatever their provenance.
            pub provenance: Provenance,
            /// The subsets of the `dataset_config`, each read as a whole configuration;
            /// empty without one.
            pub subsets: Vec<DataSubset>,
        }

        /// Every key, in field order.
        pub(crate) static KEYS: std::sync::LazyLock<Vec<KeyDecl>> =
            std::sync::LazyLock::new(|| vec![$(
                KeyDecl {
                    name: stringify!($name),
                    doc_type: ($doc_type).to_string(),
                    default_doc: config_keys!(@default_doc $ty; $kind($($default)*)),
                    rule: ($rule).to_string(),
                    doc: concat!($($doc),+).trim_ascii(),
                    aliases: &[$($(($alias, config_keys!(@note $($note)?))),*)?],
                    kohya_default: None $(.or(Some($kohya)))?,
                    verbatim: false $(|| $verbatim)?,
                    required: config_keys!(@required $kind($($default)*)),
                },
            )*]);

        impl TrainConfig {
            /// Every field read from `r` (typed, no ranges), defaults filled in; a missing
            /// required key is left empty with its error in `r`.
            pub(super) fn read(r: &mut Reader, origin: &Origin) -> TrainConfig {
                $(
                    let $name: $ty =
                        config_keys!(@read r origin $name $read; $kind($($default)*));
                )*
                TrainConfig {
                    $($name,)*
                    provenance: Provenance::default(),
                    subsets: Vec::new(),
                }
            }

            /// Each key's own range ("is out of range: <rule>").
            pub(super) fn check_ranges(&self, c: &mut Check) {
                $(config_keys!(@check c self $name $kind $($check)?);)*
            }

            /// The effective values as a YAML mapping (key -> value), in field order.
            pub(super) fn effective(&self) -> yaml_serde::Mapping {
                let mut m = yaml_serde::Mapping::new();
                $(m.insert(
                    yaml_serde::Value::String(stringify!($name).to_string()),
                    YamlValue::to_yaml(&self.$name),
                );)*
                m
            }
        }
    };

    (@read $r:ident $origin:ident $name:ident $read:expr; required($meaning:literal)) => {
        $r.required(stringify!($name), $origin, $read).unwrap_or_default()
    };
    (@read $r:ident $origin:ident $name:ident $read:expr; optional($shown:literal)) => {
        $r.get(stringify!($name), $read)
    };
    (@read $r:ident $origin:ident $name:ident $read:expr;
        fixed($default:expr $(, $shown:literal)?)) => {
        $r.get(stringify!($name), $read).unwrap_or_else(|| $default)
    };
    (@read $r:ident $origin:ident $name:ident $read:expr;
        follows($shown:literal, $default:expr)) => {
        $r.get(stringify!($name), $read).unwrap_or_else(|| $default)
    };

    (@default_doc $ty:ty; required($meaning:literal)) => { "required".to_string() };
    (@default_doc $ty:ty; optional($shown:literal)) => { $shown.to_string() };
    (@default_doc $ty:ty; fixed($default:expr)) => {{
        let value: $ty = $default;
        format!("`{}`", super::docs::cell(&YamlValue::to_yaml(&value)))
    }};
    (@default_doc $ty:ty; fixed($default:expr, $shown:literal)) => { $shown.to_string() };
    (@default_doc $ty:ty; follows($shown:literal, $default:expr)) => { $shown.to_string() };

    (@required required($meaning:literal)) => { Some($meaning) };
    (@required $kind:ident($($default:tt)*)) => { None };

    (@note) => { "" };
    (@note $note:literal) => { $note };

    (@check $c:ident $cfg:ident $name:ident $kind:ident) => {};
    (@check $c:ident $cfg:ident $name:ident optional $check:expr) => {
        if let Some(value) = &$cfg.$name {
            $c.range(stringify!($name), holds(value, $check));
        }
    };
    (@check $c:ident $cfg:ident $name:ident follows $check:expr) => {
        if $c.is_own_value(stringify!($name)) {
            $c.range(stringify!($name), holds(&$cfg.$name, $check));
        }
    };
    (@check $c:ident $cfg:ident $name:ident $kind:ident $check:expr) => {
        $c.range(stringify!($name), holds(&$cfg.$name, $check));
    };
}

pub(crate) use config_keys;
