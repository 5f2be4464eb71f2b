//! Images made by the reference tools (see `testdata/env/README.md`), checked without them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use basalt_bootloader::env::{
    Endianness, EnvLayout, EnvSource, FileStore, MemoryStore, UbootEnv, parse, serialize,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/env")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn fixture_vars() -> BTreeMap<String, String> {
    vars(&[
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("BOOT_ORDER", "A B"),
        ("bootcmd", "run distro_bootcmd; echo ok"),
        ("multi", "line one\nline two"),
    ])
}

#[test]
fn mkenvimage_fixtures_parse_and_match_byte_for_byte() {
    let cases = [
        ("mkenvimage-single.bin", EnvLayout::single(0x100), None),
        (
            "mkenvimage-redund-p00.bin",
            EnvLayout::redundant(0x100).with_padding(0),
            Some(1),
        ),
        (
            "mkenvimage-be.bin",
            EnvLayout::single(0x100).with_endianness(Endianness::Big),
            None,
        ),
    ];
    for (name, layout, flags) in cases {
        let bytes = fixture(name);
        let image = parse(&layout, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(image.vars, fixture_vars(), "{name}");
        assert_eq!(image.flags, flags, "{name}");
        assert_eq!(serialize(&layout, &image.vars, 1).unwrap(), bytes, "{name}");
    }
}

#[test]
fn fw_setenv_fixture_reads_newest_copy() {
    let img = fixture("fw_setenv-redund.img");
    let (first, second) = img.split_at(0x100);
    let store = MemoryStore::with_copies(vec![first.to_vec(), second.to_vec()]);
    let env = UbootEnv::load(store, EnvLayout::redundant(0x100)).unwrap();
    assert_eq!(
        env.source(),
        EnvSource::Copy {
            index: 1,
            flags: Some(4)
        }
    );
    let mut expected = fixture_vars();
    expected.insert("BOOT_ORDER".into(), "B A".into());
    expected.insert("BOOT_B_LEFT".into(), "2".into());
    expected.remove("multi");
    assert_eq!(env.vars(), &expected);
    // The older copy (flags 3) still holds the previous state.
    let older = parse(&EnvLayout::redundant(0x100), first).unwrap();
    assert_eq!(older.flags, Some(3));
    assert_eq!(
        older.vars.get("multi").map(String::as_str),
        Some("line one\nline two")
    );
}

#[test]
fn single_fixture_through_file_store() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/env/mkenvimage-single.bin");
    let env = UbootEnv::load(FileStore::new(path), EnvLayout::single(0x100)).unwrap();
    assert_eq!(env.vars(), &fixture_vars());
}
