//! The initdata wire format: digest vectors, TEE field fitting, annotation and device
//! round trips, and every malformed-input error.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // test code

use std::io::Write as _;

use base64::Engine as _;
use protocols::initdata::{self, Algorithm, InitData, InitDataError, MAX_SIZE};

/// A fixed document; the digests below were computed with `sha256sum`, `sha384sum` and
/// `sha512sum` over exactly these bytes.
const FIXED: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault AllowRequestsFailingPolicy := false\n'''\n\"aa.toml\" = \"[token_configs]\\n\"\n";
const SHA256: &str = "2fb97ce054663b558814ca9706e290b17259abe0f7a1e6a957cfcaedfcf6cb98";
const SHA384: &str = "ca38287e1e6f239bbc45f7b2b42fdb5355f116cbf03ae1e07efd6f95abdaa559083b2934196a9604c7a02e53f7a632bc";
const SHA512: &str = "79108053ed29a4d7efae30d0879856d44ee69f2cbdbb01b84d0b26838c93041299e77f349a9d1734418caca881db22a5d326150f1ecb3940928ab909315f2f18";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

fn device_with(magic: &[u8; 8], declared: u64, blob: &[u8]) -> Vec<u8> {
    let mut d = magic.to_vec();
    d.extend_from_slice(&declared.to_le_bytes());
    d.extend_from_slice(blob);
    d
}

#[test]
fn digest_vectors() {
    assert_eq!(
        hex(&initdata::digest(Algorithm::Sha256, FIXED.as_bytes())),
        SHA256
    );
    assert_eq!(
        hex(&initdata::digest(Algorithm::Sha384, FIXED.as_bytes())),
        SHA384
    );
    assert_eq!(
        hex(&initdata::digest(Algorithm::Sha512, FIXED.as_bytes())),
        SHA512
    );
}

#[test]
fn tee_fields_truncate_or_zero_pad() {
    let d256 = initdata::digest(Algorithm::Sha256, FIXED.as_bytes());
    let d384 = initdata::digest(Algorithm::Sha384, FIXED.as_bytes());
    let d512 = initdata::digest(Algorithm::Sha512, FIXED.as_bytes());
    // sha256: exact for HOST_DATA, zero-padded for MRCONFIGID.
    assert_eq!(hex(&initdata::host_data(&d256)), SHA256);
    assert_eq!(
        hex(&initdata::mrconfigid(&d256)),
        format!("{SHA256}{}", "0".repeat(32))
    );
    // sha384: truncated for HOST_DATA, exact for MRCONFIGID.
    assert_eq!(hex(&initdata::host_data(&d384)), SHA384[..64]);
    assert_eq!(hex(&initdata::mrconfigid(&d384)), SHA384);
    // sha512: truncated for both.
    assert_eq!(hex(&initdata::host_data(&d512)), SHA512[..64]);
    assert_eq!(hex(&initdata::mrconfigid(&d512)), SHA512[..96]);
    assert_eq!(initdata::host_data(&[]), [0u8; 32]);
}

#[test]
fn parse_and_to_toml() {
    let init = InitData::parse(FIXED).unwrap();
    assert_eq!(init.version, "0.1.0");
    assert_eq!(init.algorithm, Algorithm::Sha256);
    assert_eq!(init.data.len(), 2);
    assert_eq!(init.data["aa.toml"], "[token_configs]\n");
    assert_eq!(
        init.policy(),
        Some("package agent_policy\ndefault AllowRequestsFailingPolicy := false\n")
    );
    assert_eq!(InitData::parse(&init.to_toml()).unwrap(), init);
    assert_eq!(InitData::parse_bytes(FIXED.as_bytes()).unwrap(), init);

    let built = InitData::with_policy(Algorithm::Sha384, "package agent_policy\n");
    let text = built.to_toml();
    assert_eq!(
        text,
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n"
    );
    assert_eq!(InitData::parse(&text).unwrap(), built);
    // Values a literal string cannot hold fall back to basic strings.
    let awkward = InitData::with_policy(Algorithm::Sha512, "a ''' b\r\n\"c\"\\\u{1}");
    assert_eq!(InitData::parse(&awkward.to_toml()).unwrap(), awkward);
    // No [data] at all is an empty document.
    let empty = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha512\"\n").unwrap();
    assert!(empty.data.is_empty() && empty.policy().is_none());
}

/// Found by the `initdata` fuzz target: a value with a control character (here from a
/// `\u0001` escape) was written as a multi-line literal string, which TOML forbids, so
/// `to_toml` produced a document that does not parse.
#[test]
fn to_toml_escapes_control_characters() {
    let init = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"a\" = \"x\\u0001y\"\n").unwrap();
    assert_eq!(init.data["a"], "x\u{1}y");
    assert_eq!(InitData::parse(&init.to_toml()).unwrap(), init);
    for c in ['\0', '\u{1b}', '\u{7f}', '\u{85}', '\t', '\n'] {
        let d = InitData::with_policy(Algorithm::Sha256, &format!("a{c}b\n"));
        assert_eq!(InitData::parse(&d.to_toml()).unwrap(), d, "{c:?}");
    }
}

#[test]
fn parse_errors() {
    let with = |head: &str| format!("{head}\n[data]\n\"policy.rego\" = \"x\"\n");
    assert!(matches!(
        InitData::parse(&with("version = \"0.2.0\"\nalgorithm = \"sha256\"")),
        Err(InitDataError::Version(v)) if v == "0.2.0"
    ));
    assert!(matches!(
        InitData::parse(&with("version = \"0.1.0\"\nalgorithm = \"md5\"")),
        Err(InitDataError::Algorithm(a)) if a == "md5"
    ));
    assert!(matches!(
        InitData::parse(&with("algorithm = \"sha256\"")),
        Err(InitDataError::Field("version"))
    ));
    assert!(matches!(
        InitData::parse(&with("version = 1\nalgorithm = \"sha256\"")),
        Err(InitDataError::Field("version"))
    ));
    assert!(matches!(
        InitData::parse(&with("version = \"0.1.0\"")),
        Err(InitDataError::Field("algorithm"))
    ));
    assert!(matches!(
        InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"a.toml\" = 3\n"),
        Err(InitDataError::DataNotString(k)) if k == "a.toml"
    ));
    assert!(matches!(
        InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data.nested]\nx = \"y\"\n"),
        Err(InitDataError::DataNotString(k)) if k == "nested"
    ));
    assert!(matches!(
        InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n"),
        Err(InitDataError::DataNotTable)
    ));
    assert!(matches!(
        InitData::parse("version = "),
        Err(InitDataError::Toml { .. })
    ));
    assert!(matches!(
        InitData::parse_bytes(b"\xff\xfe"),
        Err(InitDataError::Utf8 { .. })
    ));
}

#[test]
fn annotation_round_trip_is_reproducible() {
    let a = initdata::encode_annotation(FIXED.as_bytes()).unwrap();
    assert_eq!(a, initdata::encode_annotation(FIXED.as_bytes()).unwrap());
    assert_eq!(initdata::decode_annotation(&a).unwrap(), FIXED.as_bytes());
    assert_eq!(
        initdata::decode_annotation(&format!("  {a}\n")).unwrap(),
        FIXED.as_bytes()
    );
    // Fixed gzip header: magic, deflate, no flags, mtime 0.
    let gz = base64::engine::general_purpose::STANDARD
        .decode(&a)
        .unwrap();
    assert_eq!(&gz[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    // Any gzip encoder's output is accepted.
    let other = base64::engine::general_purpose::STANDARD.encode(gzip(FIXED.as_bytes()));
    assert_eq!(
        initdata::decode_annotation(&other).unwrap(),
        FIXED.as_bytes()
    );
}

#[test]
fn annotation_errors() {
    assert!(matches!(
        initdata::decode_annotation("not base64!"),
        Err(InitDataError::Base64 { .. })
    ));
    let not_gzip = base64::engine::general_purpose::STANDARD.encode(FIXED);
    assert!(matches!(
        initdata::decode_annotation(&not_gzip),
        Err(InitDataError::Gzip { .. })
    ));
    assert!(matches!(
        initdata::decode_annotation(""),
        Err(InitDataError::Gzip { .. })
    ));
    let mut truncated = gzip(FIXED.as_bytes());
    truncated.truncate(truncated.len() - 6);
    let truncated = base64::engine::general_purpose::STANDARD.encode(truncated);
    assert!(matches!(
        initdata::decode_annotation(&truncated),
        Err(InitDataError::Gzip { .. })
    ));
}

#[test]
fn gzip_bomb_is_refused() {
    // 64 MiB of zeros compress to about 64 KiB.
    let bomb = gzip(&vec![0u8; 64 * MAX_SIZE]);
    assert!(bomb.len() < 128 * 1024);
    let value = base64::engine::general_purpose::STANDARD.encode(&bomb);
    let e = initdata::decode_annotation(&value).unwrap_err();
    assert!(
        matches!(e, InitDataError::TooLarge { limit } if limit == MAX_SIZE as u64),
        "{e:?}"
    );
    assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    let device = device_with(b"initdata", bomb.len() as u64, &bomb);
    assert!(matches!(
        initdata::read_device(device.as_slice()),
        Err(InitDataError::TooLarge { .. })
    ));
    // Exactly the limit is fine.
    let max = vec![b'#'; MAX_SIZE];
    let value = initdata::encode_annotation(&max).unwrap();
    assert_eq!(initdata::decode_annotation(&value).unwrap().len(), MAX_SIZE);
}

#[test]
fn device_round_trip() {
    let image = initdata::device_image(FIXED.as_bytes()).unwrap();
    assert_eq!(image.len() % 512, 0);
    assert_eq!(&image[..8], b"initdata");
    let len = u64::from_le_bytes(image[8..16].try_into().unwrap()) as usize;
    assert!(image[16 + len..].iter().all(|&b| b == 0));
    assert_eq!(image, initdata::device_image(FIXED.as_bytes()).unwrap());
    assert_eq!(
        initdata::read_device(image.as_slice()).unwrap(),
        FIXED.as_bytes()
    );
    // Through a file, as the guest reads its block device.
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&image).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    assert_eq!(initdata::read_device(file).unwrap(), FIXED.as_bytes());
    // A document over one sector pads to a whole number of sectors.
    let blob = gzip(FIXED.as_bytes());
    let padded = initdata::device_image(&vec![b'x'; 3000]).unwrap();
    assert_eq!(padded.len() % 512, 0);
    assert_eq!(
        initdata::read_device(padded.as_slice()).unwrap(),
        vec![b'x'; 3000]
    );
    // An unpadded image (header + blob only) reads too.
    let bare = device_with(b"initdata", blob.len() as u64, &blob);
    assert_eq!(
        initdata::read_device(bare.as_slice()).unwrap(),
        FIXED.as_bytes()
    );
}

#[test]
fn device_errors() {
    let blob = gzip(FIXED.as_bytes());
    let read = |d: &[u8]| initdata::read_device(d).unwrap_err();

    assert!(matches!(read(b""), InitDataError::ShortHeader));
    assert!(matches!(
        read(b"initdata\x10\x00"),
        InitDataError::ShortHeader
    ));
    let e = read(&device_with(b"INITDATA", blob.len() as u64, &blob));
    assert!(
        matches!(e, InitDataError::BadMagic { found } if &found == b"INITDATA"),
        "{e:?}"
    );
    let e = read(&device_with(b"initdata", blob.len() as u64 + 1, &blob));
    assert!(
        matches!(e, InitDataError::LengthPastEnd { declared, available }
            if declared == blob.len() as u64 + 1 && available == blob.len() as u64),
        "{e:?}"
    );
    assert!(matches!(
        read(&device_with(b"initdata", u64::MAX, &blob)),
        InitDataError::TooLarge { .. }
    ));
    let e = read(&device_with(b"initdata", blob.len() as u64 - 4, &blob));
    assert!(matches!(e, InitDataError::Gzip { .. }), "{e:?}");
    let e = read(&device_with(
        b"initdata",
        FIXED.len() as u64,
        FIXED.as_bytes(),
    ));
    assert!(matches!(e, InitDataError::Gzip { .. }), "{e:?}");
    assert!(matches!(
        read(&device_with(b"initdata", 0, &[])),
        InitDataError::Gzip { .. }
    ));
    // Every message names what went wrong.
    assert!(read(b"").to_string().contains("header"));
}

#[test]
fn every_truncation_of_a_device_fails_cleanly() {
    let image = initdata::device_image(FIXED.as_bytes()).unwrap();
    let blob_end = 16 + u64::from_le_bytes(image[8..16].try_into().unwrap()) as usize;
    for cut in 0..blob_end {
        assert!(
            initdata::read_device(&image[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    for i in 0..blob_end {
        let mut flipped = image.clone();
        flipped[i] ^= 0x55;
        // Corruption must never panic; it may by luck still decode (e.g. in the header
        // padding bytes of gzip), in which case the content differs or errors.
        let _ = initdata::read_device(flipped.as_slice());
    }
}
