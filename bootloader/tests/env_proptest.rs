//! Property tests of the U-Boot env format: the parser never panics, and encoding then
//! decoding gives back the same variables.

use std::collections::BTreeMap;

use basalt_bootloader::env::{
    Endianness, EnvLayout, FormatError, encoded_len, parse, parse_data, serialize,
};
use proptest::prelude::*;

fn layout_strategy(max_size: usize) -> impl Strategy<Value = EnvLayout> {
    (0..max_size, any::<bool>(), any::<bool>(), any::<u8>()).prop_map(|(size, red, big, pad)| {
        let layout = if red {
            EnvLayout::redundant(size)
        } else {
            EnvLayout::single(size)
        };
        layout
            .with_endianness(if big {
                Endianness::Big
            } else {
                Endianness::Little
            })
            .with_padding(pad)
    })
}

/// Anything the binary format can represent: non-empty names without `=` or NUL, values
/// without NUL (arbitrary Unicode otherwise, newlines included).
fn vars_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[^=\u{0}]{1,12}", "[^\u{0}]{0,24}", 0..16)
}

/// A copy of `layout` whose data area is `data` (cut or padded to fit) with a correct CRC,
/// so that the parser goes past the CRC check.
fn with_valid_crc(layout: &EnvLayout, data: &[u8], flags: u8) -> Vec<u8> {
    let mut out = vec![0u8; layout.header_len()];
    if layout.redundant {
        out[4] = flags;
    }
    out.extend_from_slice(&data[..data.len().min(layout.data_capacity())]);
    out.resize(layout.size, layout.padding);
    let crc = crc32fast::hash(&out[layout.header_len()..]);
    let bytes = match layout.endianness {
        Endianness::Little => crc.to_le_bytes(),
        Endianness::Big => crc.to_be_bytes(),
    };
    out[..4].copy_from_slice(&bytes);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        layout in layout_strategy(600),
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = parse(&layout, &bytes);
        let _ = parse_data(&bytes);
    }

    #[test]
    fn parse_never_panics_past_a_valid_crc(
        layout in layout_strategy(600),
        data in prop::collection::vec(
            prop_oneof![Just(0u8), Just(b'='), Just(b'a'), Just(0xFF), any::<u8>()],
            0..600,
        ),
        flags in any::<u8>(),
    ) {
        prop_assume!(layout.check().is_ok());
        let copy = with_valid_crc(&layout, &data, flags);
        if let Ok(image) = parse(&layout, &copy) {
            prop_assert_eq!(image.flags, layout.redundant.then_some(flags));
            // Whatever was read can be written back and reads the same, except a data
            // area filled to its last byte without the closing empty entry: U-Boot (and
            // `parse`) read that, but writing it needs one byte more, as mkenvimage does.
            match serialize(&layout, &image.vars, flags) {
                Ok(again) => prop_assert_eq!(parse(&layout, &again).unwrap(), image),
                Err(FormatError::TooLarge { needed, capacity, .. }) => {
                    prop_assert_eq!(needed, capacity + 1);
                }
                Err(e) => prop_assert!(false, "serialize: {e}"),
            }
        }
    }

    #[test]
    fn serialize_then_parse_round_trips(
        vars in vars_strategy(),
        slack in 0usize..64,
        redundant in any::<bool>(),
        big in any::<bool>(),
        padding in any::<u8>(),
        flags in any::<u8>(),
    ) {
        let header = if redundant { 5 } else { 4 };
        let size = header + encoded_len(&vars) + slack;
        let base = if redundant { EnvLayout::redundant(size) } else { EnvLayout::single(size) };
        let endianness = if big { Endianness::Big } else { Endianness::Little };
        let layout = base.with_endianness(endianness).with_padding(padding);
        let bytes = serialize(&layout, &vars, flags).unwrap();
        prop_assert_eq!(bytes.len(), size);
        let image = parse(&layout, &bytes).unwrap();
        prop_assert_eq!(&image.vars, &vars);
        prop_assert_eq!(image.flags, redundant.then_some(flags));
        // One byte less and it no longer fits.
        if slack == 0 {
            let small = EnvLayout { size: size - 1, ..layout };
            let err = serialize(&small, &vars, flags).unwrap_err();
            let is_too_large =
                matches!(err, FormatError::TooLarge { .. } | FormatError::SizeTooSmall { .. });
            prop_assert!(is_too_large);
        }
    }
}
