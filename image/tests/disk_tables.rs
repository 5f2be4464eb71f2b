//! Partition tables written by `basalt_image::disk` checked by tools nobody here wrote:
//! `sgdisk -v` (GPT consistency: CRCs, backup header, overlaps) and `sfdisk -J` (layout).

use std::process::Command;

use basalt_image::disk::{MIB, PartitionKind, PartitionRequest, TableType, plan, write_table};

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not found ({e}): run scripts/setup-host"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn requests() -> Vec<PartitionRequest> {
    [
        ("BOOT", 16, PartitionKind::Boot, true),
        ("SYSTEM-A", 32, PartitionKind::System, true),
        ("SYSTEM-B", 32, PartitionKind::System, true),
        ("STATE", 8, PartitionKind::LinuxData, false),
        ("DATA", 8, PartitionKind::LinuxData, false),
    ]
    .into_iter()
    .map(|(label, mib, kind, fat)| PartitionRequest {
        label: label.into(),
        size: mib * MIB,
        kind,
        fat,
    })
    .collect()
}

fn write_image(table: TableType) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let plan = plan(table, &requests()).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    file.set_len(plan.size).unwrap();
    write_table(&mut file, &plan, "test-board 1.0.0").unwrap();
    (dir, path)
}

#[test]
fn gpt_passes_sgdisk_verify_and_sfdisk_reads_labels() {
    let (_dir, path) = write_image(TableType::Gpt);
    let p = path.to_str().unwrap();
    let verify = run("sgdisk", &["-v", p]);
    assert!(verify.contains("No problems found"), "{verify}");
    let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &["-J", p])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let parts = table["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["BOOT", "SYSTEM-A", "SYSTEM-B", "STATE", "DATA"]);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[1]["size"], 32 * 2048);
}

#[test]
fn mbr_with_logical_partitions_reads_back_in_sfdisk() {
    let (_dir, path) = write_image(TableType::Mbr);
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["-J", path.to_str().unwrap()])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "dos");
    let parts = table["partitions"].as_array().unwrap();
    let nodes: Vec<String> = parts
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            node.trim_start_matches(path.to_str().unwrap()).to_string()
        })
        .collect();
    assert_eq!(nodes, ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[0]["bootable"], true);
    assert_eq!(parts[3]["type"], "f");
    assert_eq!(parts[4]["type"], "83");
    assert_eq!(parts[4]["size"], 8 * 2048);
}

#[test]
fn same_seed_gives_identical_tables() {
    let (_a, pa) = write_image(TableType::Gpt);
    let (_b, pb) = write_image(TableType::Gpt);
    assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
}
