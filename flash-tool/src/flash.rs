//! Flashing an image to one or more devices: the plan (config validation, bmap, safety
//! checks, all before any byte is written), then one reader thread and one writer thread
//! per device, then per-device verification in parallel. A device that fails is reported
//! and dropped; the others go on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use crate::ExitCode;
use crate::blockdev::{DeviceFile, Target};
use crate::bmap::{BlockMap, BmapError};
use crate::device::{DeviceError, DeviceInfo, SafetyContext, Sysfs, check};
use crate::firstboot::{FirstBootConfig, FirstBootError, STATE_LABEL};
use crate::pipeline::{QUEUE_DEPTH, ReadError, ReadPlan, run_reader};
use crate::progress::{Phase, Reporter};
use crate::source::{Compression, SourceError, SourceSpec};
use crate::verify::VerifyError;
use crate::writer::{WriteError, WriteOptions, WriteReport, write_device};

/// A failure that stops the whole run before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] FirstBootError),
    /// The bmap is unusable.
    #[error(transparent)]
    Bmap(#[from] BmapError),
    /// A device is refused or unusable.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The source cannot be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Partition-image writes need exactly one device.
    #[error("{0}")]
    Usage(String),
}

/// A failure of one device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFailure {
    /// Opening or writing.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The source failed while this device was being written.
    #[error("{0}")]
    Source(String),
    /// The device could not be opened.
    #[error(transparent)]
    Open(#[from] crate::blockdev::BlockError),
}

/// What to flash where.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// The image.
    pub source: SourceSpec,
    /// An explicit bmap; else the one next to the image, unless `no_bmap`.
    pub bmap: Option<PathBuf>,
    /// Ignore any bmap and write every byte.
    pub no_bmap: bool,
    /// Target devices.
    pub devices: Vec<PathBuf>,
    /// Read back and compare.
    pub verify: bool,
    /// First-boot config file.
    pub config: Option<PathBuf>,
    /// Move the backup GPT to the end and grow DATA.
    pub grow_data: bool,
    /// Devices the user allows although they look like system disks.
    pub force_system_disk: Vec<PathBuf>,
    /// Print the plan only.
    pub dry_run: bool,
    /// fdatasync every this many bytes.
    pub sync_every: u64,
    /// Use O_DIRECT when possible.
    pub direct: bool,
    /// Write into the partition with this GPT label instead of the whole disk.
    pub partition: Option<String>,
    /// Allow regular files as targets (tests, image preparation); no O_EXCL, no sysfs rules.
    pub allow_files: bool,
}

/// The outcome for one device.
#[derive(Debug)]
pub struct DeviceResult {
    /// The device as given.
    pub device: PathBuf,
    /// The report, or the failure.
    pub outcome: Result<(WriteReport, u64), DeviceFailure>,
    /// Seconds writing.
    pub write_secs: f64,
    /// Seconds verifying.
    pub verify_secs: f64,
}

/// The plan, as printed by `--dry-run`.
#[derive(Debug, serde::Serialize)]
pub struct Plan {
    /// The source.
    pub source: String,
    /// Its compression (local files only; streams are sniffed when opened).
    pub compression: Option<Compression>,
    /// The bmap used.
    pub bmap: Option<PathBuf>,
    /// Image size when known.
    pub image_size: Option<u64>,
    /// Bytes to write when known.
    pub mapped_bytes: Option<u64>,
    /// The devices.
    pub devices: Vec<DeviceInfo>,
    /// The partition written, if not the whole disk.
    pub partition: Option<String>,
    /// The config injected.
    pub config: Option<PathBuf>,
    /// Whether DATA is grown.
    pub grow_data: bool,
    /// Whether data is verified.
    pub verify: bool,
}

/// Everything checked before writing.
pub struct Prepared {
    /// The plan.
    pub plan: Plan,
    map: Option<BlockMap>,
    config: Option<FirstBootConfig>,
}

/// Validates the config, loads the bmap and applies the safety rules.
pub fn prepare(opts: &FlashOptions, sys: &Sysfs) -> Result<Prepared, PlanError> {
    let config = opts
        .config
        .as_deref()
        .map(crate::firstboot::load)
        .transpose()?;
    if opts.partition.is_some() && opts.devices.len() != 1 {
        return Err(PlanError::Usage(
            "--partition writes exactly one device".into(),
        ));
    }
    if opts.partition.is_some() && (config.is_some() || opts.grow_data) {
        return Err(PlanError::Usage(
            "--config and --grow-data apply to whole-disk writes, not --partition".into(),
        ));
    }
    let bmap_path = if opts.no_bmap {
        None
    } else {
        opts.bmap.clone().or_else(|| opts.source.sibling_bmap())
    };
    let map = bmap_path.as_deref().map(BlockMap::load).transpose()?;
    let mut compression = None;
    let mut file_size = None;
    if let Some(p) = opts.source.local_path() {
        let mut f = std::fs::File::open(p).map_err(|source| SourceError::Io {
            name: p.display().to_string(),
            source,
        })?;
        let mut magic = [0u8; 8];
        let n = std::io::Read::read(&mut f, &mut magic).unwrap_or(0);
        let c = Compression::sniff(&magic[..n]);
        compression = Some(c);
        if c == Compression::None {
            file_size = f.metadata().ok().map(|m| m.len());
        }
    }
    let image_size = map.as_ref().map(|m| m.image_size).or(file_size);
    let mut devices = Vec::new();
    for d in &opts.devices {
        let info = match sys.resolve(d) {
            Ok(i) => i,
            Err(DeviceError::NotBlock { .. }) if opts.allow_files && d.is_file() => DeviceInfo {
                name: d.display().to_string(),
                path: d.clone(),
                devnum: String::new(),
                size: std::fs::metadata(d).map(|m| m.len()).unwrap_or(0),
                removable: true,
                read_only: false,
                transport: "file".into(),
                model: String::new(),
                mounts: Vec::new(),
                backing_file: None,
            },
            Err(e) => return Err(e.into()),
        };
        let needed = if opts.partition.is_some() {
            None
        } else {
            image_size
        };
        let ctx = SafetyContext::new(
            sys,
            opts.source.local_path(),
            needed,
            &opts.force_system_disk,
        );
        check(&info, d, &ctx)?;
        devices.push(info);
    }
    Ok(Prepared {
        plan: Plan {
            source: opts.source.name(),
            compression,
            bmap: bmap_path,
            image_size,
            mapped_bytes: map.as_ref().map(BlockMap::mapped_bytes).or(image_size),
            devices,
            partition: opts.partition.clone(),
            config: opts.config.clone(),
            grow_data: opts.grow_data,
            verify: opts.verify,
        },
        map,
        config,
    })
}

/// Runs a prepared flash. Returns the source error (if the reader failed) and the
/// per-device results.
pub fn run(
    opts: &FlashOptions,
    prepared: Prepared,
    reporter: &dyn Reporter,
) -> (Option<ReadError>, Vec<DeviceResult>) {
    let Prepared { plan, map, config } = prepared;
    let mut results: Vec<DeviceResult> = Vec::new();
    // Open every target first (O_EXCL); a device that cannot be opened fails alone.
    let mut targets: Vec<(PathBuf, DeviceFile, WriteOptions)> = Vec::new();
    for info in &plan.devices {
        let exclusive = info.transport != "file";
        let opened = DeviceFile::open(&info.path, exclusive, opts.direct).and_then(|t| {
            let (base, limit) = match &opts.partition {
                Some(label) => partition_range(&info.path, label).map_err(|e| {
                    crate::blockdev::BlockError::Io {
                        op: "read the partition table of",
                        name: info.path.display().to_string(),
                        offset: 0,
                        source: std::io::Error::other(e),
                    }
                })?,
                None => (0, t.size()),
            };
            Ok((t, base, limit))
        });
        match opened {
            Ok((t, base, limit)) => targets.push((
                info.path.clone(),
                t,
                WriteOptions {
                    base,
                    limit,
                    whole_disk: opts.partition.is_none(),
                    sync_every: opts.sync_every,
                    grow_data: opts.grow_data,
                    config: config.clone(),
                    hash: opts.verify,
                },
            )),
            Err(e) => results.push(DeviceResult {
                device: info.path.clone(),
                outcome: Err(e.into()),
                write_secs: 0.0,
                verify_secs: 0.0,
            }),
        }
    }
    if targets.is_empty() {
        return (None, results);
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let source = match crate::source::open(&opts.source, consumed.clone()) {
        Ok(s) => s,
        Err(e) => return (Some(ReadError::Source(e)), results),
    };
    let raw_file = match (&opts.source, source.compression) {
        (SourceSpec::Path(p), Compression::None) => std::fs::File::open(p).ok(),
        _ => None,
    };
    let total = plan.mapped_bytes;
    let input_len = source.input_len;
    let raw = raw_file.is_some();
    let position = Arc::new(AtomicU64::new(0));
    let read_plan = ReadPlan {
        source,
        raw_file,
        position: position.clone(),
        map: map.as_ref(),
        exclude_label: config.as_ref().map(|_| STATE_LABEL),
    };
    let verify = opts.verify;
    let (read_result, device_results) = std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (path, mut target, wopts) in targets {
            let (tx, rx) = sync_channel(QUEUE_DEPTH);
            senders.push(Some(tx));
            let label = path.display().to_string();
            handles.push(scope.spawn(move || {
                reporter.phase(&label, Phase::Write, total);
                let t0 = Instant::now();
                let written = write_device(&mut target, rx, &wopts, reporter, &label);
                let write_secs = t0.elapsed().as_secs_f64();
                let mut verify_secs = 0.0;
                let outcome = match written {
                    Err(e) => Err(DeviceFailure::from(e)),
                    Ok(report) if verify => {
                        reporter.done(&label, Phase::Write, report.bytes);
                        let t1 = Instant::now();
                        let r =
                            crate::verify::verify(&mut target, &report.written, reporter, &label);
                        verify_secs = t1.elapsed().as_secs_f64();
                        target.release();
                        r.map(|n| (report, n)).map_err(DeviceFailure::from)
                    }
                    Ok(report) => {
                        reporter.done(&label, Phase::Write, report.bytes);
                        Ok((report, 0))
                    }
                };
                (path, outcome, write_secs, verify_secs)
            }));
        }
        // Decompress progress from the consumed-bytes counter.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            let consumed = consumed.clone();
            let position = position.clone();
            // Raw files are read with pread: report the reader's position instead of
            // the bytes consumed through the decoder.
            let counter = move || {
                if raw {
                    position.load(Ordering::Relaxed)
                } else {
                    consumed.load(Ordering::Relaxed)
                }
            };
            scope.spawn(move || {
                if input_len.is_some() {
                    reporter.phase("source", Phase::Read, input_len);
                }
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if input_len.is_some() {
                        reporter.progress("source", Phase::Read, counter());
                    }
                }
                if input_len.is_some() {
                    reporter.done("source", Phase::Read, counter());
                }
            })
        };
        let quiet = crate::progress::Quiet;
        let r = run_reader(read_plan, &mut senders, &quiet);
        drop(senders);
        stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        let outs: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        (r, outs)
    });
    let read_error = read_result.err();
    for (path, outcome, write_secs, verify_secs) in device_results {
        let outcome = match (outcome, &read_error) {
            (Err(DeviceFailure::Write(WriteError::Aborted { .. })), Some(e)) => {
                Err(DeviceFailure::Source(format!(
                    "{}: nothing was written to its first MiB: {e}",
                    path.display()
                )))
            }
            (o, _) => o,
        };
        results.push(DeviceResult {
            device: path,
            outcome,
            write_secs,
            verify_secs,
        });
    }
    for r in &results {
        let label = r.device.display().to_string();
        match &r.outcome {
            Ok(_) => reporter.result(&label, None),
            Err(e) => reporter.result(&label, Some((&e.to_string(), failure_code(e) as i32))),
        }
    }
    (read_error, results)
}

/// The exit code for a device failure.
pub fn failure_code(e: &DeviceFailure) -> ExitCode {
    match e {
        DeviceFailure::Verify(VerifyError::Mismatch { .. }) => ExitCode::VerifyFailed,
        DeviceFailure::Source(_) => ExitCode::SourceFailed,
        DeviceFailure::Write(WriteError::FirstBoot(_)) => ExitCode::ConfigInvalid,
        _ => ExitCode::WriteFailed,
    }
}

/// The byte range of the partition labelled `label` on `device`.
pub fn partition_range(device: &Path, label: &str) -> Result<(u64, u64), String> {
    let mut f = std::fs::File::open(device).map_err(|e| e.to_string())?;
    let name = device.display().to_string();
    let table = basalt_bootloader::partition_table::PartitionTable::read(&mut f, &name)
        .map_err(|e| e.to_string())?;
    let p = table
        .by_label(label)
        .ok_or_else(|| format!("{name} has no partition labelled {label}"))?;
    Ok((p.start, p.size))
}
