//! The release files written next to the disk image: `disk.img.bmap` (bmaptool XML 2.0),
//! `disk.img.zst`, the signed update bundle `slot.bundle` (when a signing key is given) and
//! `manifest.json` (board, version, layout, sizes, sha256 of every artefact, verity root,
//! and the system extensions in the root filesystem: each one's name, its packages as
//! pinned, and the number and uncompressed bytes of the files it added; an empty list when
//! the build carries none).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use super::extension::ExtensionReport;
use super::{BuildOutput, BuildRequest, ComposeError, step};
use crate::bmap::write_bmap;
use crate::bundle::{BundleMeta, BundleWriter, load_signing_key};
use crate::inputs::sha256_file;

/// zstd level of `disk.img.zst`: fast, and the image is mostly holes anyway.
const ZSTD_LEVEL: i32 = 3;

#[derive(Serialize)]
struct Manifest<'a> {
    board: &'a str,
    arch: &'a str,
    version: &'a str,
    source_date_epoch: u64,
    kernel_release: &'a str,
    verity_root_hash: &'a str,
    disk_size: u64,
    partition_table: &'static str,
    partitions: Vec<ManifestPartition>,
    extensions: &'a [ExtensionReport],
    artefacts: Vec<Artefact>,
}

#[derive(Serialize)]
struct ManifestPartition {
    number: u32,
    label: String,
    start: u64,
    size: u64,
}

#[derive(Serialize)]
struct Artefact {
    file: String,
    size: u64,
    sha256: String,
}

fn compress_zstd(input: &Path, output: &Path) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, crate::sparse::SparseReader::open(input)?);
    let file = File::create(output)?;
    let mut encoder = zstd::stream::Encoder::new(BufWriter::new(file), ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    io::copy(&mut reader, &mut encoder)?;
    let mut writer = encoder.finish()?;
    writer.flush()?;
    writer.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Writes the bmap, the compressed image, the bundle and the manifest into `dir`.
pub fn write_release_files(
    req: &BuildRequest,
    dir: &Path,
    output: &BuildOutput,
) -> Result<(), ComposeError> {
    let disk = dir.join("disk.img");
    write_bmap(&disk, &dir.join("disk.img.bmap")).map_err(step("write the bmap"))?;
    compress_zstd(&disk, &dir.join("disk.img.zst")).map_err(step("compress the disk image"))?;
    if let Some(key_path) = &req.signing_key {
        let key = load_signing_key(key_path).map_err(step("load the signing key"))?;
        let mut root = [0u8; 32];
        hex::decode_to_slice(&output.root_hash, &mut root).map_err(step("decode the root hash"))?;
        let meta = BundleMeta::new(
            req.board.name.clone(),
            req.version.clone(),
            req.board.arch.as_str().to_string(),
            req.epoch,
            root,
        );
        BundleWriter::write(&dir.join("slot.img"), &meta, &key, &dir.join("slot.bundle"))
            .map_err(step("write the update bundle"))?;
    }
    let mut artefacts = Vec::new();
    for name in [
        "disk.img",
        "disk.img.bmap",
        "disk.img.zst",
        "slot.img",
        "slot.bundle",
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let size = path.metadata().map_err(step("stat an artefact"))?.len();
        let sha256 = sha256_file(&path).map_err(step("hash an artefact"))?;
        artefacts.push(Artefact {
            file: name.to_string(),
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        board: &req.board.name,
        arch: req.board.arch.as_str(),
        version: &req.version,
        source_date_epoch: req.epoch,
        kernel_release: &output.kernel_release,
        verity_root_hash: &output.root_hash,
        disk_size: output.plan.size,
        partition_table: match output.plan.table {
            crate::disk::TableType::Gpt => "gpt",
            crate::disk::TableType::Mbr => "mbr",
        },
        partitions: output
            .plan
            .partitions
            .iter()
            .map(|p| ManifestPartition {
                number: p.number,
                label: p.request.label.clone(),
                start: p.start,
                size: p.request.size,
            })
            .collect(),
        extensions: &output.extensions,
        artefacts,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(step("encode manifest.json"))?;
    json.push(b'\n');
    std::fs::write(dir.join("manifest.json"), json).map_err(step("write manifest.json"))
}
