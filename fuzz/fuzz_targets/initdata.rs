//! Initdata from the host: the block-device image the guest agent reads at boot
//! (`protocols::initdata::read_device`), the annotation value the shim decodes
//! (base64 + gzip, `decode_annotation`, and the hypervisor crate's
//! `PodInitdata::from_annotations`), and the TOML document itself, whose canonical
//! form (`to_toml`) must parse back to the same document.
//!
//! Input: first byte picks the layer (0: device image, 1: annotation value,
//! 2: TOML text, 3: the two pod annotations separated by `SEP`).
#![no_main]

use hypervisor::initdata::{PodInitdata, RUNTIME_ANNOTATION};
use kata_cc_fuzz::{split_once, SEP};
use libfuzzer_sys::fuzz_target;
use protocols::initdata::{self, InitData};

fn document(raw: &[u8]) {
    let Ok(d) = InitData::parse_bytes(raw) else { return };
    let text = d.to_toml();
    match InitData::parse(&text) {
        Ok(back) => assert_eq!(back, d, "to_toml round trip changed the document"),
        Err(e) => panic!("to_toml wrote TOML that does not parse: {e}\n{text:?}"),
    }
    // What the host writes, the guest reads back.
    let img = initdata::device_image(raw).unwrap_or_else(|e| panic!("device_image: {e}"));
    assert_eq!(initdata::read_device(&img[..]).ok().as_deref(), Some(raw));
    let _ = initdata::digest(d.algorithm, raw);
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            if let Ok(raw) = initdata::read_device(rest) {
                document(&raw);
            }
        }
        1 => {
            let Ok(s) = std::str::from_utf8(rest) else { return };
            if let Ok(raw) = initdata::decode_annotation(s) {
                document(&raw);
            }
        }
        2 => document(rest),
        _ => {
            let (a, b) = split_once(rest, SEP);
            let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else { return };
            let mut ann = vec![(initdata::ANNOTATION, a)];
            if !b.is_empty() {
                ann.push((RUNTIME_ANNOTATION, b));
            }
            if let Ok(Some(p)) = PodInitdata::from_annotations(ann) {
                let _ = p.digest_hex();
                if let Ok(img) = p.device_image() {
                    assert_eq!(initdata::read_device(&img[..]).ok(), Some(p.raw.clone()));
                }
            }
        }
    }
});
