//! `piivault import FILE`: validates every line first, then imports in batches with a
//! progress bar, resumable after an interruption (see `pipeline::import`), and prints
//! which subject id each line became.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::pipeline::import::{self, Committed, Format, LineError, Run};

/// Errors printed in full before the rest are only counted.
const SHOWN_ERRORS: usize = 100;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The file: CSV with a header row of field names, or JSON lines (`{"fields": {…}}` a
    /// line, optionally with `"records": {"COLLECTION": [{…}]}` and `"consents":
    /// [{"purpose", "notice_version", "channel", "separate", "guardian"}]`). Interrupted? Run the same command again: it carries on where it
    /// stopped, without importing anything twice (its progress is kept in
    /// FILE.piivault-import).
    file: PathBuf,
    /// The file's format (default: from its extension, .csv or .jsonl/.ndjson/.json).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Write the mapping from line number to subject id to this file (CSV: line,subject)
    /// instead of standard output.
    #[arg(long, value_name = "FILE")]
    map_out: Option<PathBuf>,
    /// The purpose the data was collected for (declared in purposes.toml); recorded in
    /// every audit event of the import.
    #[arg(long, default_value = "service")]
    purpose: String,
    /// Import the valid lines even if some are not (without it, one bad line stops the
    /// import before anything is stored).
    #[arg(long)]
    skip_invalid: bool,
    /// Subjects per transaction. Larger batches import faster into a large vault (each
    /// batch rewrites the blind-index pages it touches), but hold the store's write lock
    /// longer: a running server's changes wait for each batch (about 0.5 s at 10,000 on
    /// SQLite). For a first load, 25,000 or more.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    batch: u32,
}

/// An import's progress, kept beside the file.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    file_sha256: String,
    run: String,
    /// Subject ids are derived from it (hex); see `SubjectId::in_run`.
    secret: String,
    purpose: String,
    batch: u32,
    skip_invalid: bool,
    /// Every valid line up to this one is stored.
    through_line: u64,
    imported: u64,
    finished: bool,
}

impl Progress {
    fn path(file: &Path) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(".piivault-import");
        PathBuf::from(name)
    }

    fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; delete it to start the import over",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written whole (temporary file, fsync, rename) so a crash leaves the old or the new.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("piivault-import.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn open(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))
}

fn bar(len: u64, what: &str) -> ProgressBar {
    super::progress_bar(len, what, "lines")
}

pub async fn run(settings: &Settings, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let format = match args.format.or_else(|| Format::from_path(&args.file)) {
        Some(f) => f,
        None => bail!(
            "cannot tell the format of {} from its name: pass --format csv or --format jsonl",
            args.file.display()
        ),
    };
    let digest = sha256_file(&args.file)?;
    let progress_path = Progress::path(&args.file);
    let earlier = Progress::load(&progress_path)?;
    if let Some(p) = &earlier {
        if p.file_sha256 != digest {
            bail!(
                "{} changed since an interrupted import of it (recorded in {}); \
                 import the original file to finish that run, or delete {} to start a new one",
                args.file.display(),
                progress_path.display(),
                progress_path.display()
            );
        }
        if p.finished {
            bail!(
                "{} was imported already (run {}, {} subjects); delete {} to import it again",
                args.file.display(),
                p.run,
                p.imported,
                progress_path.display()
            );
        }
    }

    let app = crate::open(settings).await?;
    let pipeline = Arc::new(app.pipeline(Default::default()));

    // Pass 1: every line checked before anything is stored.
    let started = Instant::now();
    let checking = bar(0, "checking ");
    let mut valid = Vec::new();
    let mut errors: Vec<LineError> = Vec::new();
    let mut invalid_lines = 0u64;
    {
        let lines = import::lines(&pipeline, format, open(&args.file)?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for line in lines {
            checking.inc(1);
            let outcome = line.and_then(|l| import::check(&pipeline, &l).map(|()| l.number));
            match outcome {
                Ok(n) => valid.push(n),
                Err(e) => {
                    invalid_lines += 1;
                    if errors.len() < SHOWN_ERRORS {
                        errors.push(e);
                    }
                }
            }
        }
    }
    checking.finish_and_clear();
    for e in &errors {
        eprintln!("{e}");
    }
    if invalid_lines > errors.len() as u64 {
        eprintln!(
            "… and {} more",
            counted(invalid_lines - errors.len() as u64, "invalid line")
        );
    }
    if invalid_lines > 0 && !args.skip_invalid {
        eprintln!("{}", refused(invalid_lines, valid.len() as u64));
        return Ok(ExitCode::FAILURE);
    }

    let mut progress = match earlier {
        Some(p) => {
            eprintln!(
                "carrying on with run {}: {} {} imported before it was interrupted",
                p.run,
                counted(p.imported, "subject"),
                if p.imported == 1 { "was" } else { "were" }
            );
            p
        }
        None => {
            let p = Progress {
                file_sha256: digest,
                run: crate::crypto::random_id("imp"),
                secret: hex::encode(crate::crypto::random_bytes::<16>()),
                purpose: args.purpose.clone(),
                batch: args.batch,
                skip_invalid: args.skip_invalid,
                through_line: 0,
                imported: 0,
                finished: false,
            };
            p.save(&progress_path)?;
            p
        }
    };
    let mut secret = [0u8; 16];
    hex::decode_to_slice(&progress.secret, &mut secret)
        .with_context(|| format!("{} is damaged", progress_path.display()))?;
    let run = Arc::new(
        Run::by_operator(&pipeline, progress.run.clone(), secret, &progress.purpose)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );

    // Pass 2: lines are encrypted on a worker thread while the batch before is stored.
    let todo = valid.iter().filter(|n| **n > progress.through_line).count() as u64;
    let importing = bar(valid.len() as u64, "importing");
    importing.set_position(valid.len() as u64 - todo);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<import::Batch, LineError>>(2);
    let producer = {
        let (pipeline, run, file) = (pipeline.clone(), run.clone(), args.file.clone());
        let (from, batch, skip_invalid) = (
            progress.through_line,
            progress.batch as usize,
            progress.skip_invalid,
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let lines = import::lines(&pipeline, format, open(&file)?)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut current = Vec::with_capacity(batch);
            for line in lines {
                let prepared = line.and_then(|l| {
                    if l.number <= from {
                        return Ok(None);
                    }
                    import::prepare(&pipeline, &run, &l).map(Some)
                });
                match prepared {
                    Ok(Some(p)) => current.push(p),
                    Ok(None) => {}
                    Err(_) if skip_invalid => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return Ok(());
                    }
                }
                if current.len() == batch {
                    let full = std::mem::replace(&mut current, Vec::with_capacity(batch));
                    if tx
                        .blocking_send(Ok(import::Batch::new(&run, full)))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if !current.is_empty() {
                let _ = tx.blocking_send(Ok(import::Batch::new(&run, current)));
            }
            Ok(())
        })
    };
    let mut stored_now = 0u64;
    let mut already = 0u64;
    let import_started = Instant::now();
    while let Some(batch) = rx.recv().await {
        let batch =
            batch.map_err(|e| anyhow::anyhow!("{e}: the file changed while it was imported"))?;
        let (n, last) = (batch.len() as u64, batch.last_line());
        match import::commit(&pipeline, batch)
            .await
            .map_err(|e| anyhow::anyhow!("storing lines up to {last}: {e}"))?
        {
            Committed::Stored => stored_now += n,
            Committed::AlreadyThere => already += n,
        }
        progress.through_line = last;
        progress.imported += n;
        progress.save(&progress_path)?;
        importing.inc(n);
    }
    producer.await.context("the import worker stopped")??;
    importing.finish_and_clear();
    let seconds = import_started.elapsed().as_secs_f64();

    // The mapping: every valid line's subject id.
    let mut out: Box<dyn std::io::Write> = match &args.map_out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    writeln!(out, "line,subject")?;
    for n in &valid {
        writeln!(out, "{n},{}", run.subject_id(*n))?;
    }
    out.flush()?;
    drop(out);
    progress.finished = true;
    progress.save(&progress_path)?;
    eprintln!(
        "imported {} in {seconds:.1} s ({:.0} subjects/s; {:.1} s in all with checking){}{}; run {}{}",
        counted(stored_now, "subject"),
        stored_now as f64 / seconds.max(1e-9),
        started.elapsed().as_secs_f64(),
        if already > 0 { format!(", {already} found already stored by the interrupted attempt") } else { String::new() },
        if invalid_lines > 0 { format!(", {} skipped", counted(invalid_lines, "invalid line")) } else { String::new() },
        progress.run,
        match &args.map_out {
            Some(p) => format!("; mapping in {}", p.display()),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `1 line`, `2 lines`: a count and its noun, singular or plural.
fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Why nothing was imported: `invalid` of the file's lines are, and `valid` are not.
fn refused(invalid: u64, valid: u64) -> String {
    let one = invalid == 1;
    format!(
        "{invalid} of {} {} invalid; nothing was imported (fix {}, or pass --skip-invalid \
         to import the {})",
        counted(invalid + valid, "line"),
        if one { "is" } else { "are" },
        if one { "it" } else { "them" },
        counted(valid, "valid line")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_english() {
        assert_eq!(counted(0, "line"), "0 lines");
        assert_eq!(counted(1, "valid line"), "1 valid line");
        assert_eq!(counted(2, "subject"), "2 subjects");
        assert_eq!(
            refused(1, 1),
            "1 of 2 lines is invalid; nothing was imported (fix it, or pass --skip-invalid \
             to import the 1 valid line)"
        );
        assert_eq!(
            refused(3, 2),
            "3 of 5 lines are invalid; nothing was imported (fix them, or pass --skip-invalid \
             to import the 2 valid lines)"
        );
    }
}
