//! Registry documents in image-rs: manifests and indexes (the pull's `parse_manifest`
//! plus the platform, digest and size checks `resolve` makes), image configurations
//! merged into a container spec (`merge_image_config`, with the image's passwd/group),
//! and the image reference and digest strings a pull request names.
//!
//! Input: first byte picks:
//! * 0..=4: the rest is a manifest body, served with no content type (0) or as an OCI
//!   manifest, OCI index, Docker manifest, Docker manifest list (1..=4);
//! * 5: the rest is an image configuration JSON, merged with a small user database;
//! * 6: `passwd SEP group SEP User`: the user database and the config's `User`;
//! * 7: the rest is an image reference, then its digest (if any) is parsed.
#![no_main]

use std::str::FromStr;

use image_rs::digest::Digest;
use image_rs::registry::check_manifest_for_fuzzing;
use image_rs::{merge_image_config, Reference, UserDb};
use kata_cc_fuzz::{split_all, SEP};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use oci_spec::runtime::Spec;

const TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:app,root\nextra:x:2000:app\n";

fn merge(config: &ImageConfiguration, users: &UserDb) {
    let mut spec = Spec::default();
    if merge_image_config(config, &mut spec, users).is_ok() {
        // The merged spec is what the agent then checks and runs.
        if let Some(p) = spec.process() {
            let _ = guest_agent::spec::check_process(p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let image = Reference::from_str("registry.example/app:1").unwrap_or_else(|e| panic!("{e}"));
    match sel % 8 {
        t @ 0..=4 => {
            let _ = check_manifest_for_fuzzing(&image, rest, TYPES[usize::from(t)]);
        }
        5 => {
            let Ok(config) = serde_json::from_slice::<ImageConfiguration>(rest) else { return };
            merge(&config, &UserDb::parse(PASSWD, GROUP));
        }
        6 => {
            let parts = split_all(rest, SEP);
            let text = |i: usize| std::str::from_utf8(parts.get(i).copied().unwrap_or_default()).unwrap_or_default();
            let users = UserDb::parse(text(0), text(1));
            let Ok(cfg) = ConfigBuilder::default().user(text(2).to_owned()).build() else { return };
            let Ok(config) = ImageConfigurationBuilder::default().config(cfg).build() else { return };
            merge(&config, &users);
        }
        _ => {
            let Ok(s) = std::str::from_utf8(rest) else { return };
            let _ = Digest::parse(s);
            if let Ok(r) = Reference::from_str(s) {
                if let Some(d) = r.digest() {
                    let _ = Digest::parse(d);
                }
                let _ = r.whole();
            }
        }
    }
});
