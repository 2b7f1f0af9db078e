//! `lorafuse tags`: the tag tools over a folder's captions (see `lorafuse::prepare::tags`).

use std::path::PathBuf;

use lorafuse::prepare::tags::{apply, frequency, read_captions, split, Pattern, TagEdit};

use super::{CliError, Out, Outcome};

/// The flags of `lorafuse tags`.
#[derive(clap::Args)]
pub struct TagsArgs {
    /// The folder of captioned images (subfolders included).
    pub dir: PathBuf,
    /// The caption files' extension.
    #[arg(long, default_value = ".txt")]
    pub caption_extension: String,
    /// Put these tags first in every caption (comma-separated; moved if present, added if
    /// not), e.g. --trigger "sks style".
    #[arg(long, value_name = "TAGS")]
    pub trigger: Option<String>,
    /// Remove tags matching this name or pattern (* matches anything; case and _ vs space
    /// ignored), e.g. --remove "*background" (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub remove: Vec<String>,
    /// Replace tags matching OLD (a name or pattern) with NEW, e.g. --replace 1girl=woman
    /// (repeatable; an empty NEW removes).
    #[arg(long, value_name = "OLD=NEW")]
    pub replace: Vec<String>,
    /// Remove a tag's repeats within a caption.
    #[arg(long)]
    pub dedupe: bool,
    /// Show each change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Without edits: how many tags the frequency table lists (0 = all).
    #[arg(long, default_value_t = 50)]
    pub top: usize,
}

impl TagsArgs {
    fn edit(&self) -> Result<TagEdit, CliError> {
        let replace = self
            .replace
            .iter()
            .map(|r| match r.split_once('=') {
                Some((old, new)) if !old.trim().is_empty() => {
                    Ok((Pattern::new(old), new.trim().to_string()))
                }
                _ => Err(CliError::Usage(format!(
                    "--replace {r}: expected OLD=NEW, e.g. --replace 1girl=woman"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(TagEdit {
            remove: self.remove.iter().map(|p| Pattern::new(p)).collect(),
            replace,
            dedupe: self.dedupe,
            trigger: self.trigger.as_deref().map(split).unwrap_or_default(),
        })
    }
}

pub fn tags_cmd(args: &TagsArgs) -> Outcome {
    let ext = format!(".{}", args.caption_extension.trim().trim_start_matches('.'));
    let edit = args.edit()?;
    let captions = read_captions(&args.dir, &ext)?;
    let mut out = Out::new();
    if !captions.uncaptioned.is_empty() {
        eprintln!(
            "note: {} images have no {ext} caption (e.g. {})",
            captions.uncaptioned.len(),
            captions.uncaptioned[0].display()
        );
    }
    if edit.is_empty() {
        let table = frequency(&captions);
        out.line(format_args!(
            "{} captions, {} distinct tags",
            captions.files.len(),
            table.len()
        ))?;
        let n = if args.top == 0 { table.len() } else { args.top };
        for (tag, count) in table.iter().take(n) {
            out.line(format_args!("{count:6}  {tag}"))?;
        }
        return Ok(());
    }
    let changes = apply(&captions, &edit, args.dry_run)?;
    if args.dry_run {
        for (path, before, after) in &changes {
            out.line(format_args!(
                "{}\n  - {}\n  + {}",
                path.display(),
                before.trim_end(),
                after.trim_end()
            ))?;
        }
    }
    out.line(format_args!(
        "{} {} of {} captions{}",
        if args.dry_run {
            "would change"
        } else {
            "changed"
        },
        changes.len(),
        captions.files.len(),
        if args.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    ))
}
