//! Interoperability of `basalt_bootloader::env` with the reference tools:
//! `fw_printenv`/`fw_setenv` (Debian's libubootenv-tool) and `mkenvimage` (u-boot-tools).
//!
//! The tools are required: a missing tool fails the test and says to run `scripts/setup-host`.
//! Every `fw_printenv`/`fw_setenv` call gets `-f` with a nonexistent defaults file, so the
//! host's `/etc/u-boot-initial-env` never leaks in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_bootloader::env::{
    ApplyOutcome, DeviceCopy, DeviceStore, Endianness, EnvError, EnvLayout, EnvSource, EnvUpdate,
    FileStore, FwEnvConfig, UbootEnv, encoded_len, parse, read_header, serialize,
};

const SIZES: [usize; 2] = [0x4000, 0x20000];
const PADDINGS: [u8; 2] = [0xFF, 0x00];
const NO_DEFAULTS: &str = "/nonexistent/basalt-test-u-boot-initial-env";

type Vars = BTreeMap<String, String>;

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in PATH: run scripts/setup-host \
                 (it installs libubootenv-tool and u-boot-tools)"
            )
        })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Variables like Basalt's, plus awkward but valid content and a large value that fills
/// about half of `size`.
fn sample_vars(size: usize) -> Vars {
    let mut v = vars(&[
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("bootcmd", "run distro_bootcmd; echo 'done' = \"ok\""),
        ("empty", ""),
        ("eq", "a=b=c"),
        ("unicode", "ünïcödé ✓"),
        ("Zupper", "sorts before lowercase"),
    ]);
    v.insert("big".into(), "0123456789abcdef".repeat(size / 32));
    v
}

/// Writes a `fw_env.config` with one line per `(path, offset)` and returns its path.
fn write_config(dir: &Path, copies: &[(&Path, u64)], size: usize) -> PathBuf {
    let text: String = copies
        .iter()
        .map(|(path, offset)| format!("{} {offset:#x} {size:#x}\n", path.display()))
        .collect();
    let config = dir.join("fw_env.config");
    std::fs::write(&config, text).unwrap();
    config
}

/// `fw_printenv -c CONFIG`: the variables, or the tool's stderr if it fails.
fn fw_printenv(config: &Path) -> Result<Vars, String> {
    let out = run(Command::new(tool("fw_printenv"))
        .arg("-c")
        .arg(config)
        .args(["-f", NO_DEFAULTS]));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("fw_printenv output is UTF-8");
    Ok(text
        .lines()
        .map(|line| {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("odd line {line:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect())
}

/// `fw_setenv -c CONFIG ARGS...`, asserting success (a `-f` in `ARGS` overrides ours).
fn fw_setenv(config: &Path, args: &[&str]) {
    let out = run(Command::new(tool("fw_setenv"))
        .arg("-c")
        .arg(config)
        .args(["-f", NO_DEFAULTS])
        .args(args));
    assert!(
        out.status.success(),
        "fw_setenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mkenvimage` of `input` with extra `args`; returns the image.
fn mkenvimage(dir: &Path, args: &[&str], size: usize, input: &str) -> Vec<u8> {
    let (input_path, out_path) = (dir.join("mkenv.txt"), dir.join("mkenv.bin"));
    std::fs::write(&input_path, input).unwrap();
    let out = run(Command::new(tool("mkenvimage"))
        .args(args)
        .args(["-s", &format!("{size:#x}"), "-o"])
        .arg(&out_path)
        .arg(&input_path));
    assert!(
        out.status.success(),
        "mkenvimage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(out_path).unwrap()
}

fn as_text(vars: &Vars) -> String {
    vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

fn image_file(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; len]).unwrap();
    path
}

#[test]
fn ours_single_read_by_fw_printenv() {
    for size in SIZES {
        for padding in PADDINGS {
            let dir = tempfile::tempdir().unwrap();
            let layout = EnvLayout::single(size).with_padding(padding);
            let update: EnvUpdate = sample_vars(size)
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect();

            // A whole file, like uboot.env on a FAT partition.
            let file = dir.path().join("uboot.env");
            let config = write_config(dir.path(), &[(&file, 0)], size);
            let store = FileStore::new(&file);
            let mut env = UbootEnv::load_or_default(store, layout, Vars::new()).unwrap();
            env.apply(&update).unwrap();
            assert_eq!(fw_printenv(&config).unwrap(), *env.vars(), "size {size:#x}");
            env.apply(&EnvUpdate::new().unset("big").set("BOOT_ORDER", "B A"))
                .unwrap();
            assert_eq!(fw_printenv(&config).unwrap(), *env.vars(), "size {size:#x}");
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(bytes.len(), size);
            assert_eq!(bytes[size - 1], padding);

            // A copy at an offset of a disk image; the bytes around it are untouched.
            let disk = image_file(dir.path(), 3 * size);
            let config = write_config(dir.path(), &[(&disk, 0x2000)], size);
            let store = DeviceStore::single(&disk, 0x2000);
            let mut env = UbootEnv::load_or_default(store, layout, Vars::new()).unwrap();
            env.apply(&update).unwrap();
            assert_eq!(fw_printenv(&config).unwrap(), *env.vars(), "size {size:#x}");
            let bytes = std::fs::read(&disk).unwrap();
            assert!(
                bytes[..0x2000].iter().all(|&b| b == 0),
                "bytes before the copy"
            );
            assert!(
                bytes[0x2000 + size..].iter().all(|&b| b == 0),
                "bytes after the copy"
            );
        }
    }
}

#[test]
fn ours_redundant_read_by_fw_printenv() {
    for size in SIZES {
        for padding in PADDINGS {
            let dir = tempfile::tempdir().unwrap();
            let disk = image_file(dir.path(), 2 * size + 0x1000);
            let config = write_config(
                dir.path(),
                &[(&disk, 0x1000), (&disk, 0x1000 + size as u64)],
                size,
            );
            let store = FwEnvConfig::read(&config).unwrap().store();
            let layout = EnvLayout::redundant(size).with_padding(padding);
            let mut env = UbootEnv::load_or_default(store, layout, sample_vars(size)).unwrap();
            for round in 0..5 {
                let outcome = env
                    .apply(
                        &EnvUpdate::new()
                            .set("round", round.to_string())
                            .unset("empty"),
                    )
                    .unwrap();
                let ApplyOutcome::Written { copy, .. } = outcome else {
                    panic!("{outcome:?}")
                };
                // libubootenv starts from copy 0 as current when nothing is valid, so the
                // first write goes to copy 1, then they alternate.
                assert_eq!(copy, (round + 1) % 2);
                assert_eq!(fw_printenv(&config).unwrap(), *env.vars(), "round {round}");
            }
        }
    }
}

#[test]
fn ours_redundant_in_two_files_read_by_fw_printenv() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("uboot.env"),
        dir.path().join("uboot-redund.env"),
    );
    let size = 0x4000;
    let config = write_config(dir.path(), &[(&a, 0), (&b, 0)], size);
    let store = FileStore::redundant(&a, &b);
    let mut env =
        UbootEnv::load_or_default(store, EnvLayout::redundant(size), Vars::new()).unwrap();
    // libubootenv cannot open a missing file: create both copies before asking it.
    env.apply(&EnvUpdate::new().set("x", "1")).unwrap();
    env.apply(&EnvUpdate::new().set("x", "2")).unwrap();
    assert_eq!(fw_printenv(&config).unwrap(), vars(&[("x", "2")]));
}

#[test]
fn fw_setenv_output_read_by_us() {
    for size in SIZES {
        for redundant in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let disk = image_file(dir.path(), 2 * size);
            let copies: Vec<(&Path, u64)> = if redundant {
                vec![(&disk, 0), (&disk, size as u64)]
            } else {
                vec![(&disk, 0)]
            };
            let config = write_config(dir.path(), &copies, size);
            let config_text = FwEnvConfig::read(&config).unwrap();
            let layout = config_text.layout();
            let start = sample_vars(size);
            UbootEnv::load_or_default(config_text.store(), layout, start)
                .unwrap()
                .save()
                .unwrap();
            let mut env = UbootEnv::load(config_text.store(), layout).unwrap();

            let script = dir.path().join("script.txt");
            std::fs::write(
                &script,
                "BOOT_ORDER=B A\nBOOT_B_LEFT=2\n# comment\nempty=\nnew=1\n",
            )
            .unwrap();
            let steps: [&[&str]; 5] = [
                &["BOOT_A_LEFT", "0"],
                &["big"],
                &["spaced", "x  y"],
                &["cli_empty", ""],
                &["-s", script.to_str().unwrap()],
            ];
            for args in steps {
                let before = env.source();
                fw_setenv(&config, args);
                env.reload().unwrap();
                assert_eq!(
                    *env.vars(),
                    fw_printenv(&config).unwrap(),
                    "after fw_setenv {args:?}"
                );
                if redundant {
                    // fw_setenv wrote the other copy with flags + 1, as we do.
                    let EnvSource::Copy {
                        index,
                        flags: Some(f),
                    } = before
                    else {
                        panic!()
                    };
                    let expected = EnvSource::Copy {
                        index: 1 - index,
                        flags: Some(f.wrapping_add(1)),
                    };
                    assert_eq!(env.source(), expected);
                }
                // Its data area equals ours up to the terminator; the padding after it is
                // whatever was in fw_setenv's buffer, so only the data part is compared.
                let EnvSource::Copy { index, flags } = env.source() else {
                    panic!()
                };
                let on_disk = std::fs::read(&disk).unwrap();
                let theirs = &on_disk[index * size..(index + 1) * size];
                let ours = serialize(&layout, env.vars(), flags.unwrap_or(0)).unwrap();
                let end = layout.header_len() + encoded_len(env.vars());
                assert_eq!(&theirs[4..end], &ours[4..end], "data area after {args:?}");
            }
            let expect_script = [("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "2"), ("new", "1")];
            for (k, v) in expect_script {
                assert_eq!(env.get(k), Some(v));
            }
            // In a script, `key=` removes the variable (on the command line it stores `key=`).
            assert_eq!(env.get("empty"), None);
            assert_eq!(env.get("cli_empty"), Some(""));
            assert_eq!(env.get("spaced"), Some("x  y"));
            assert_eq!(env.get("big"), None);
        }
    }
}

#[test]
fn mkenvimage_read_by_us_and_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for size in SIZES {
        for padding in PADDINGS {
            for redundant in [false, true] {
                for endianness in [Endianness::Little, Endianness::Big] {
                    let vars = sample_vars(size);
                    let mut args = vec!["-p".to_owned(), format!("{padding:#x}")];
                    if redundant {
                        args.push("-r".into());
                    }
                    if endianness == Endianness::Big {
                        args.push("-b".into());
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let theirs = mkenvimage(dir.path(), &args, size, &as_text(&vars));
                    let base = if redundant {
                        EnvLayout::redundant(size)
                    } else {
                        EnvLayout::single(size)
                    };
                    let layout = base.with_padding(padding).with_endianness(endianness);
                    let image = parse(&layout, &theirs).unwrap();
                    assert_eq!(image.vars, vars, "{args:?}");
                    // mkenvimage -r marks its single copy with flags 1.
                    assert_eq!(image.flags, redundant.then_some(1));
                    let ours = serialize(&layout, &vars, 1).unwrap();
                    assert!(
                        ours == theirs,
                        "not byte-identical to mkenvimage {args:?} -s {size:#x}"
                    );
                }
            }
        }
    }
}

#[test]
fn mkenvimage_text_features() {
    let dir = tempfile::tempdir().unwrap();
    let size = 0x4000;
    // Unsorted input, comments, empty lines, an escaped newline, duplicates.
    let input = "zeta=last\n# a comment\n\nalpha=first\nmulti=line one\\\nline two\nalpha=again\n";
    let theirs = mkenvimage(dir.path(), &[], size, input);
    let layout = EnvLayout::single(size);
    let image = parse(&layout, &theirs).unwrap();
    let expected = vars(&[
        ("alpha", "again"),
        ("multi", "line one\nline two"),
        ("zeta", "last"),
    ]);
    // The last duplicate wins, as in libubootenv and U-Boot.
    assert_eq!(image.vars, expected);
    // mkenvimage keeps the input order; we always sort, so the bytes differ here...
    let ours = serialize(&layout, &expected, 0).unwrap();
    assert_ne!(ours, theirs);
    // ...and equal those of mkenvimage given the sorted, escaped text.
    let sorted = "alpha=again\nmulti=line one\\\nline two\nzeta=last\n";
    assert_eq!(ours, mkenvimage(dir.path(), &[], size, sorted));
}

#[test]
fn fw_printenv_reads_mkenvimage_and_not_big_endian() {
    let dir = tempfile::tempdir().unwrap();
    let size = 0x4000;
    let vars = sample_vars(size);
    let path = dir.path().join("env.bin");
    let config = write_config(dir.path(), &[(&path, 0)], size);
    std::fs::write(&path, mkenvimage(dir.path(), &[], size, &as_text(&vars))).unwrap();
    assert_eq!(fw_printenv(&config).unwrap(), vars);
    // libubootenv reads the CRC in host byte order: on a little-endian host it cannot read
    // a `mkenvimage -b` image, which we read with `Endianness::Big`.
    std::fs::write(
        &path,
        mkenvimage(dir.path(), &["-b"], size, &as_text(&vars)),
    )
    .unwrap();
    if cfg!(target_endian = "little") {
        let err = fw_printenv(&config).unwrap_err();
        assert!(err.contains("Cannot read environment"), "{err}");
    }
    let layout = EnvLayout::single(size).with_endianness(Endianness::Big);
    assert_eq!(
        UbootEnv::load(FileStore::new(&path), layout)
            .unwrap()
            .vars(),
        &vars
    );
}

/// Builds a redundant image whose copies say which they are, with the given flags and
/// optionally a broken CRC.
fn two_copies(size: usize, copies: [(u8, bool); 2]) -> Vec<u8> {
    let layout = EnvLayout::redundant(size);
    let mut disk = Vec::new();
    for (index, (flags, valid)) in copies.into_iter().enumerate() {
        let who = format!("copy{index}");
        let mut bytes = serialize(&layout, &vars(&[("who", &who)]), flags).unwrap();
        if !valid {
            bytes[0] ^= 0xFF;
        }
        disk.extend_from_slice(&bytes);
    }
    disk
}

#[test]
fn copy_selection_matches_fw_printenv() {
    let dir = tempfile::tempdir().unwrap();
    let size = 0x4000;
    let disk = dir.path().join("disk.img");
    let config = write_config(dir.path(), &[(&disk, 0), (&disk, size as u64)], size);
    let cases = [
        ((0, true), (0, true), 0),
        ((1, true), (2, true), 1),
        ((2, true), (1, true), 0),
        ((255, true), (0, true), 1),
        ((0, true), (255, true), 0),
        ((254, true), (0, true), 0), // only 255/0 is a wrap
        ((0, true), (254, true), 1),
        ((255, true), (255, true), 0),
        ((9, false), (1, true), 1),
        ((1, true), (9, false), 0),
    ];
    for (a, b, expected) in cases {
        std::fs::write(&disk, two_copies(size, [a, b])).unwrap();
        let env = UbootEnv::load(
            FwEnvConfig::read(&config).unwrap().store(),
            EnvLayout::redundant(size),
        )
        .unwrap();
        let who = format!("copy{expected}");
        assert_eq!(env.get("who"), Some(who.as_str()), "flags {a:?} {b:?}");
        assert_eq!(
            fw_printenv(&config).unwrap().get("who"),
            Some(&who),
            "flags {a:?} {b:?}"
        );
    }
}

#[test]
fn fw_setenv_flags_wrap_agrees_with_us() {
    let dir = tempfile::tempdir().unwrap();
    let size = 0x4000;
    let disk = dir.path().join("disk.img");
    let config = write_config(dir.path(), &[(&disk, 0), (&disk, size as u64)], size);
    std::fs::write(&disk, two_copies(size, [(253, true), (254, true)])).unwrap();
    let layout = EnvLayout::redundant(size);
    let open = || {
        UbootEnv::load(
            DeviceStore::redundant(
                DeviceCopy {
                    path: disk.clone(),
                    offset: 0,
                },
                DeviceCopy {
                    path: disk.clone(),
                    offset: size as u64,
                },
            ),
            layout,
        )
        .unwrap()
    };
    for (step, (copy, flags)) in [(0, 255u8), (1, 0), (0, 1), (1, 2)].into_iter().enumerate() {
        fw_setenv(&config, &["step", &step.to_string()]);
        let env = open();
        assert_eq!(
            env.source(),
            EnvSource::Copy {
                index: copy,
                flags: Some(flags)
            }
        );
        assert_eq!(env.get("step"), Some(step.to_string().as_str()));
        // Both copies stay valid throughout: the flags alone decide.
        let bytes = std::fs::read(&disk).unwrap();
        assert!(read_header(&layout, &bytes[..size]).unwrap().crc_ok());
        assert!(read_header(&layout, &bytes[size..]).unwrap().crc_ok());
        assert_eq!(fw_printenv(&config).unwrap(), *env.vars());
    }
}

#[test]
fn corrupt_env_like_fw_setenv_with_defaults() {
    let size = 0x4000;
    for redundant in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // Garbage: no copy has a valid CRC. Byte 4 is what copy 1's flags byte would be.
        let garbage: Vec<u8> = (0..2 * size).map(|i| (i * 7 % 251) as u8 | 0x41).collect();
        let (ours_img, theirs_img) = (dir.path().join("ours.img"), dir.path().join("theirs.img"));
        std::fs::write(&ours_img, &garbage).unwrap();
        std::fs::write(&theirs_img, &garbage).unwrap();
        let copies: Vec<(&Path, u64)> = if redundant {
            vec![(&theirs_img, 0), (&theirs_img, size as u64)]
        } else {
            vec![(&theirs_img, 0)]
        };
        let config = write_config(dir.path(), &copies, size);
        let err = fw_printenv(&config).unwrap_err();
        assert!(err.contains("Cannot read environment"), "{err}");

        let layout = if redundant {
            EnvLayout::redundant(size)
        } else {
            EnvLayout::single(size)
        };
        let store = || {
            if redundant {
                DeviceStore::redundant(
                    DeviceCopy {
                        path: ours_img.clone(),
                        offset: 0,
                    },
                    DeviceCopy {
                        path: ours_img.clone(),
                        offset: size as u64,
                    },
                )
            } else {
                DeviceStore::single(&ours_img, 0)
            }
        };
        let err = UbootEnv::load(store(), layout).unwrap_err();
        assert!(matches!(err, EnvError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read(&ours_img).unwrap(),
            garbage,
            "nothing written"
        );

        // fw_setenv -f DEFAULTS starts from the defaults; so does load_or_default.
        let defaults = vars(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")]);
        let defaults_file = dir.path().join("defaults.txt");
        std::fs::write(&defaults_file, as_text(&defaults)).unwrap();
        fw_setenv(
            &config,
            &["-f", defaults_file.to_str().unwrap(), "BOOT_A_LEFT", "2"],
        );
        let mut env = UbootEnv::load_or_default(store(), layout, defaults).unwrap();
        let outcome = env
            .apply(&EnvUpdate::new().set("BOOT_A_LEFT", "2"))
            .unwrap();
        assert_eq!(fw_printenv(&config).unwrap(), *env.vars());
        // Same copy, same flags (copy 1's garbage flags byte + 1), same data.
        let theirs = UbootEnv::load(FwEnvConfig::read(&config).unwrap().store(), layout).unwrap();
        let EnvSource::Copy { index, flags } = theirs.source() else {
            panic!()
        };
        assert_eq!(outcome, ApplyOutcome::Written { copy: index, flags });
        if redundant {
            assert_eq!((index, flags), (1, Some(garbage[4].wrapping_add(1))));
        }
    }
}

#[test]
fn exact_fit_is_read_by_fw_printenv() {
    let dir = tempfile::tempdir().unwrap();
    for redundant in [false, true] {
        let size = 0x4000;
        let layout = if redundant {
            EnvLayout::redundant(size)
        } else {
            EnvLayout::single(size)
        };
        // "k=" + value + "\0" + final "\0" fills the data area exactly.
        let value = "v".repeat(layout.data_capacity() - 4);
        let full = vars(&[("k", &value)]);
        assert_eq!(encoded_len(&full), layout.data_capacity());
        let disk = image_file(dir.path(), 2 * size);
        let copies: Vec<(&Path, u64)> = if redundant {
            vec![(&disk, 0), (&disk, size as u64)]
        } else {
            vec![(&disk, 0)]
        };
        let config = write_config(dir.path(), &copies, size);
        let store = FwEnvConfig::read(&config).unwrap().store();
        let mut env = UbootEnv::load_or_default(store, layout, Vars::new()).unwrap();
        env.apply(&EnvUpdate::new().set("k", value.clone()))
            .unwrap();
        assert_eq!(fw_printenv(&config).unwrap(), full);
        // One more byte does not fit, and nothing is written.
        let before = std::fs::read(&disk).unwrap();
        let err = env
            .apply(&EnvUpdate::new().set("k", format!("{value}v")))
            .unwrap_err();
        let expected = format!(
            "env data of {} bytes does not fit in env size 0x4000",
            size - layout.header_len() + 1
        );
        assert!(err.to_string().starts_with(&expected), "{err}");
        assert_eq!(std::fs::read(&disk).unwrap(), before);
        // mkenvimage draws the line at the same place.
        let flags: &[&str] = if redundant { &["-r"] } else { &[] };
        let theirs = mkenvimage(dir.path(), flags, size, &as_text(&full));
        assert!(theirs == serialize(&layout, &full, 1).unwrap());
        let too_big = format!("k={value}v\n");
        let input = dir.path().join("big.txt");
        std::fs::write(&input, too_big).unwrap();
        let out = run(Command::new(tool("mkenvimage"))
            .args(flags)
            .args(["-s", "0x4000", "-o"])
            .arg(dir.path().join("x.bin"))
            .arg(&input));
        assert!(
            !out.status.success(),
            "mkenvimage accepted an env one byte too large"
        );
    }
}
