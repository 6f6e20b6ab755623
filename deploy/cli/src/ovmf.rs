//! What an OVMF image declares to a launch measurement: the GUIDed footer table at the
//! end of the flash image and the SEV metadata (`ASEV`) it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector`, read from the public sources; our own parser):
//! the last 32 bytes of the image are the reset vector; the 18 bytes before them are
//! the footer entry (`u16` total table size, then the footer GUID). The table grows
//! downwards from there: each entry is `data`, `u16` entry size (data + 18), GUID.
//! The SEV metadata entry holds an `i32` offset, from the end of the image, of the
//! `ASEV` header: `"ASEV"`, `u32` size, `u32` version (1), `u32` item count, then
//! items of `u32` GPA, `u32` size, `u32` section type.
//!
//! Every offset is bounds-checked here, so a truncated or foreign file is reported as
//! such before the image reaches `sev`'s measurement code (which indexes unchecked).

/// SEV metadata section types (edk2 `OvmfSevMetadata.asm`).
pub mod section {
    /// Pre-validated (zero) memory.
    pub const SNP_SEC_MEMORY: u32 = 1;
    /// The SNP secrets page.
    pub const SNP_SECRETS: u32 = 2;
    /// The CPUID page.
    pub const CPUID: u32 = 3;
    /// The SVSM calling area.
    pub const SVSM_CAA: u32 = 4;
    /// The page that receives the kernel/initrd/cmdline hashes (AmdSev builds only).
    pub const SNP_KERNEL_HASHES: u32 = 0x10;
}

/// An EFI GUID in its on-disk (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// 96b582de-1fb2-45f7-baea-a366c55a082d: the footer of the table.
const FOOTER_GUID: [u8; 16] = guid(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// dc886566-984a-4798-a75e-5585a7bf67cc: SEV metadata offset.
const SEV_METADATA_GUID: [u8; 16] = guid(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// 00f771de-1a7e-4fcb-890e-68c77e2fb44e: SEV-ES AP reset block.
const SEV_ES_RESET_BLOCK_GUID: [u8; 16] = guid(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// 7255371f-3a3b-4b04-927b-1da6efa8d454: where the kernel hashes table goes.
const SEV_HASH_TABLE_GUID: [u8; 16] = guid(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);

const RESET_VECTOR_LEN: usize = 32;
const ENTRY_HEADER_LEN: usize = 18;
const PAGE: usize = 4096;
/// Larger than any OVMF build (they are 2 or 4 MiB); the image sits below 4 GiB.
pub const MAX_IMAGE_LEN: usize = 64 << 20;

/// Why a file is not a usable SNP firmware image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OvmfError {
    /// Size not a positive multiple of 4 KiB or too large.
    #[error(
        "{0} bytes is not a firmware image size (a multiple of 4096, at most {MAX_IMAGE_LEN})"
    )]
    Size(usize),
    /// No OVMF footer table.
    #[error("no OVMF GUIDed footer table at the end of the image: not an OVMF build")]
    NoFooter,
    /// A table entry or the metadata points outside the image.
    #[error("OVMF footer table or SEV metadata is corrupt: {0}")]
    Corrupt(String),
    /// No SEV metadata: the firmware cannot launch an SNP guest.
    #[error("OVMF has no SEV metadata: it cannot launch an SEV-SNP guest")]
    NoSevMetadata,
    /// No SEV-ES reset block: APs cannot start, no VMSA can be computed.
    #[error("OVMF has no SEV-ES reset block")]
    NoResetBlock,
}

/// One SEV metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// Type (see [`section`]).
    pub kind: u32,
}

/// What the image declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvmfInfo {
    /// SEV metadata sections in order.
    pub sections: Vec<Section>,
    /// GPA of the kernel hashes table, when the image has one.
    pub hash_table_gpa: Option<u32>,
}

impl OvmfInfo {
    /// Parses the footer table and the SEV metadata of an image.
    pub fn parse(image: &[u8]) -> Result<Self, OvmfError> {
        let len = image.len();
        if len == 0 || !len.is_multiple_of(PAGE) || len > MAX_IMAGE_LEN {
            return Err(OvmfError::Size(len));
        }
        let corrupt = |what: &str| OvmfError::Corrupt(what.to_owned());
        let footer_end = len - RESET_VECTOR_LEN;
        let footer_start = footer_end - ENTRY_HEADER_LEN;
        let footer = &image[footer_start..footer_end];
        if footer[2..] != FOOTER_GUID {
            return Err(OvmfError::NoFooter);
        }
        let table_len = usize::from(u16::from_le_bytes([footer[0], footer[1]]));
        let table_len = table_len
            .checked_sub(ENTRY_HEADER_LEN)
            .ok_or_else(|| corrupt("footer size smaller than its header"))?;
        let table_start = footer_start
            .checked_sub(table_len)
            .ok_or_else(|| corrupt("footer table larger than the image"))?;
        let table = &image[table_start..footer_start];

        let mut entries: Vec<([u8; 16], &[u8])> = Vec::new();
        let mut end = table.len();
        while end > 0 {
            let header = end
                .checked_sub(ENTRY_HEADER_LEN)
                .and_then(|s| table.get(s..end))
                .ok_or_else(|| corrupt("table entry header truncated"))?;
            let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
            let mut id = [0u8; 16];
            id.copy_from_slice(&header[2..]);
            let data_len = size
                .checked_sub(ENTRY_HEADER_LEN)
                .ok_or_else(|| corrupt("table entry smaller than its header"))?;
            let start = end
                .checked_sub(size)
                .ok_or_else(|| corrupt("table entry larger than the table"))?;
            entries.push((id, &table[start..start + data_len]));
            end = start;
        }
        let entry = |id: &[u8; 16]| entries.iter().find(|(g, _)| g == id).map(|(_, d)| *d);
        let u32_at = |d: &[u8], what: &str| -> Result<u32, OvmfError> {
            d.get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| corrupt(what))
        };

        let meta = entry(&SEV_METADATA_GUID).ok_or(OvmfError::NoSevMetadata)?;
        let from_end = u32_at(meta, "SEV metadata entry shorter than 4 bytes")? as usize;
        let header_at = len
            .checked_sub(from_end)
            .ok_or_else(|| corrupt("SEV metadata offset outside the image"))?;
        let header = image
            .get(header_at..header_at + 16)
            .ok_or_else(|| corrupt("SEV metadata header outside the image"))?;
        if &header[..4] != b"ASEV" {
            return Err(corrupt("SEV metadata header has no ASEV signature"));
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (size, version, count) = (word(4) as usize, word(8), word(12) as usize);
        if version != 1 {
            return Err(corrupt(&format!(
                "SEV metadata version {version}, expected 1"
            )));
        }
        let items_len = count
            .checked_mul(12)
            .filter(|n| n + 16 <= size)
            .ok_or_else(|| corrupt("SEV metadata items exceed its size"))?;
        let items = image
            .get(header_at + 16..header_at + 16 + items_len)
            .ok_or_else(|| corrupt("SEV metadata items outside the image"))?;
        let mut sections = Vec::with_capacity(count);
        for it in items.chunks_exact(12) {
            let w = |i: usize| u32::from_le_bytes([it[i], it[i + 1], it[i + 2], it[i + 3]]);
            let s = Section {
                gpa: w(0),
                size: w(4),
                kind: w(8),
            };
            if !matches!(
                s.kind,
                section::SNP_SEC_MEMORY
                    | section::SNP_SECRETS
                    | section::CPUID
                    | section::SVSM_CAA
                    | section::SNP_KERNEL_HASHES
            ) {
                return Err(corrupt(&format!(
                    "unknown SEV metadata section type {:#x}",
                    s.kind
                )));
            }
            if !(s.size as usize).is_multiple_of(PAGE) || !(s.gpa as usize).is_multiple_of(PAGE) {
                return Err(corrupt(&format!(
                    "SEV metadata section {:#x} at {:#x}+{:#x} is not page aligned",
                    s.kind, s.gpa, s.size
                )));
            }
            if s.kind == section::SNP_KERNEL_HASHES && s.size as usize != PAGE {
                return Err(corrupt("SNP_KERNEL_HASHES section is not exactly one page"));
            }
            sections.push(s);
        }
        entry(&SEV_ES_RESET_BLOCK_GUID)
            .filter(|d| d.len() >= 4)
            .ok_or(OvmfError::NoResetBlock)?;
        let hash_table_gpa = match entry(&SEV_HASH_TABLE_GUID) {
            Some(d) => {
                Some(u32_at(d, "SEV hash table entry shorter than 4 bytes")?).filter(|g| *g != 0)
            }
            None => None,
        };
        Ok(Self {
            sections,
            hash_table_gpa,
        })
    }

    /// Whether a launch with this firmware covers kernel, initrd and cmdline: it needs
    /// both an `SNP_KERNEL_HASHES` section and the hash table location.
    pub fn measures_kernel(&self) -> bool {
        self.hash_table_gpa.is_some()
            && self
                .sections
                .iter()
                .any(|s| s.kind == section::SNP_KERNEL_HASHES)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Builds an image with a footer table of `entries` (GUID, data).
    fn image(entries: &[([u8; 16], Vec<u8>)], extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut img = vec![0u8; 2 * PAGE];
        extra(&mut img);
        let mut table = Vec::new();
        for (g, d) in entries {
            table.extend_from_slice(d);
            table.extend_from_slice(&((d.len() + ENTRY_HEADER_LEN) as u16).to_le_bytes());
            table.extend_from_slice(g);
        }
        table.extend_from_slice(&((table.len() + ENTRY_HEADER_LEN) as u16).to_le_bytes());
        table.extend_from_slice(&FOOTER_GUID);
        let end = img.len() - RESET_VECTOR_LEN;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }

    fn asev(img: &mut [u8], at: usize, items: &[(u32, u32, u32)]) {
        let mut h = b"ASEV".to_vec();
        h.extend_from_slice(&((16 + 12 * items.len()) as u32).to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (g, s, k) in items {
            for w in [g, s, k] {
                h.extend_from_slice(&w.to_le_bytes());
            }
        }
        img[at..at + h.len()].copy_from_slice(&h);
    }

    fn good(items: &[(u32, u32, u32)], hash_table: bool) -> Vec<u8> {
        let off = (2 * PAGE - 256) as u32; // header at 256 from the start
        let mut entries = vec![
            (SEV_METADATA_GUID, off.to_le_bytes().to_vec()),
            (SEV_ES_RESET_BLOCK_GUID, vec![0, 0x10, 0x80, 0]),
        ];
        if hash_table {
            entries.push((
                SEV_HASH_TABLE_GUID,
                [0x00, 0x30, 0x80, 0x00, 0x00, 0x04, 0, 0].to_vec(),
            ));
        }
        image(&entries, |img| asev(img, 256, items))
    }

    #[test]
    fn parses_sections_and_kernel_hashes() {
        let items = [
            (0x80_0000, 0x9000, 1),
            (0x80_9000, 0x1000, 2),
            (0x80_a000, 0x1000, 3),
        ];
        let i = OvmfInfo::parse(&good(&items, false)).unwrap();
        assert_eq!(i.sections.len(), 3);
        assert_eq!(
            i.sections[1],
            Section {
                gpa: 0x80_9000,
                size: 0x1000,
                kind: 2
            }
        );
        assert!(!i.measures_kernel());
        let mut with = items.to_vec();
        with.push((0x80_3000, 0x1000, 0x10));
        let i = OvmfInfo::parse(&good(&with, true)).unwrap();
        assert_eq!(i.hash_table_gpa, Some(0x80_3000));
        assert!(i.measures_kernel());
        // The section alone, without the table location, measures nothing.
        assert!(!OvmfInfo::parse(&good(&with, false))
            .unwrap()
            .measures_kernel());
    }

    #[test]
    fn rejects_foreign_and_corrupt_images() {
        assert_eq!(OvmfInfo::parse(&[]), Err(OvmfError::Size(0)));
        assert_eq!(OvmfInfo::parse(&[0; 100]), Err(OvmfError::Size(100)));
        assert_eq!(OvmfInfo::parse(&[0; PAGE]), Err(OvmfError::NoFooter));
        // Footer claiming a table larger than the image.
        let mut img = image(&[], |_| {});
        let f = img.len() - RESET_VECTOR_LEN - ENTRY_HEADER_LEN;
        img[f..f + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(OvmfInfo::parse(&img), Err(OvmfError::Corrupt(_))));
        // Footer only: a plain (non-SEV) build.
        assert_eq!(
            OvmfInfo::parse(&image(&[], |_| {})),
            Err(OvmfError::NoSevMetadata)
        );
        // Metadata offset beyond the start.
        let img = image(
            &[(SEV_METADATA_GUID, 0x10_0000u32.to_le_bytes().to_vec())],
            |_| {},
        );
        assert!(matches!(OvmfInfo::parse(&img), Err(OvmfError::Corrupt(_))));
        // No ASEV signature where the offset points.
        let img = image(
            &[(SEV_METADATA_GUID, 4000u32.to_le_bytes().to_vec())],
            |_| {},
        );
        assert!(matches!(OvmfInfo::parse(&img), Err(OvmfError::Corrupt(_))));
        // Item count beyond the header size; unknown type; misaligned; odd hash page.
        for items in [
            vec![(0x1000, 0x1000, 7)],
            vec![(0x1001, 0x1000, 1)],
            vec![(0x1000, 0x2000, 0x10)],
        ] {
            assert!(
                matches!(
                    OvmfInfo::parse(&good(&items, true)),
                    Err(OvmfError::Corrupt(_))
                ),
                "{items:?}"
            );
        }
        let mut img = good(&[(0x1000, 0x1000, 1)], false);
        img[256 + 4..256 + 8].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(OvmfInfo::parse(&img), Err(OvmfError::Corrupt(_))));
        // No reset block.
        let img = image(
            &[(
                SEV_METADATA_GUID,
                ((2 * PAGE - 256) as u32).to_le_bytes().to_vec(),
            )],
            |img| asev(img, 256, &[(0x1000, 0x1000, 1)]),
        );
        assert_eq!(OvmfInfo::parse(&img), Err(OvmfError::NoResetBlock));
    }
}
