//! Metadata that survives at a device's ends after its first sectors were wiped, read from the
//! first and last MiB that safe-format reads anyway (pure). `blkid -p` calls such a device
//! blank: without a protective MBR it ignores both GPT headers, and it may miss RAID and ZFS
//! metadata kept at the end. Each of these means "this disk held data": never format it.

/// Logical sector sizes a GPT may have been written with.
const SECTOR_SIZES: [u64; 2] = [512, 4096];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MD_MAGIC: u32 = 0xa92b_4efc;
const DDF_MAGIC: u32 = 0xde11_de11;
const IMSM_SIGNATURE: &[u8] = b"Intel Raid ISM Cfg Sig. ";
const ZFS_UBERBLOCK_MAGIC: u64 = 0x00ba_b10c;
const ZFS_LABEL: u64 = 256 << 10;

/// The first and the last bytes of a device (at most a MiB each; `tail` ends at `size`).
pub struct DeviceEnds<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub size: u64,
}

impl DeviceEnds<'_> {
    /// The bytes at absolute offset `at`, if they lie in the head or the tail.
    fn at(&self, at: u64, len: u64) -> Option<&[u8]> {
        let end = at.checked_add(len)?;
        if end <= self.head.len() as u64 {
            return self.head.get(at as usize..end as usize);
        }
        let tail_start = self.size.checked_sub(self.tail.len() as u64)?;
        if at >= tail_start && end <= self.size {
            return self
                .tail
                .get((at - tail_start) as usize..(end - tail_start) as usize);
        }
        None
    }

    fn u32_le(&self, at: u64) -> Option<u32> {
        Some(u32::from_le_bytes(self.at(at, 4)?.try_into().ok()?))
    }

    fn u64_le(&self, at: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.at(at, 8)?.try_into().ok()?))
    }
}

/// What the ends still hold, one description each; empty when they hold nothing known.
pub fn leftover_metadata(ends: &DeviceEnds<'_>) -> Vec<String> {
    let mut found = Vec::new();
    for sector in SECTOR_SIZES {
        if gpt_header_at(ends, sector, 1) {
            found.push(format!(
                "a primary GPT header ({sector}-byte sectors) without its protective MBR"
            ));
        }
        if ends.size >= 2 * sector && gpt_header_at(ends, sector, ends.size / sector - 1) {
            found.push(format!("a backup GPT header in its last sector ({sector}-byte sectors): a partition table whose primary copy was wiped"));
        }
    }
    if ends.size >= 128 << 10 {
        // md 0.90: 64 KiB-aligned, in the last 64..128 KiB; either byte order.
        let at = (ends.size & !0xffff) - (64 << 10);
        if ends
            .at(at, 4)
            .is_some_and(|m| m == MD_MAGIC.to_le_bytes() || m == MD_MAGIC.to_be_bytes())
        {
            found.push("a Linux RAID (md 0.90) superblock at its end".into());
        }
    }
    if ends.size >= 16 << 10 {
        // md 1.0: 8 KiB before the end, 4 KiB-aligned; its major version is 1.
        let at = ((ends.size / 512 - 16) & !7) * 512;
        if ends.u32_le(at) == Some(MD_MAGIC) && ends.u32_le(at + 4) == Some(1) {
            found.push("a Linux RAID (md 1.0) superblock at its end".into());
        }
    }
    if ends
        .at(ends.size.saturating_sub(512), 4)
        .is_some_and(|m| m == DDF_MAGIC.to_be_bytes())
    {
        found.push("a DDF RAID anchor in its last sector".into());
    }
    if ends
        .at(ends.size.saturating_sub(1024), IMSM_SIGNATURE.len() as u64)
        .is_some_and(|s| s == IMSM_SIGNATURE)
    {
        found.push("Intel Matrix RAID (IMSM) metadata at its end".into());
    }
    if zfs_end_labels(ends) {
        found.push("ZFS pool labels at its end".into());
    }
    found
}

/// A GPT header at LBA `lba`: its signature, revision 1.0 and a plausible header size, and
/// (for a copy at the end) its own LBA recorded in it.
fn gpt_header_at(ends: &DeviceEnds<'_>, sector: u64, lba: u64) -> bool {
    let at = lba * sector;
    let Some(signature) = ends.at(at, 8) else {
        return false;
    };
    let header_size = ends.u32_le(at + 12).unwrap_or(0);
    signature == GPT_SIGNATURE
        && ends.u32_le(at + 8) == Some(0x0001_0000)
        && (92..=sector as u32).contains(&header_size)
        && ends.u64_le(at + 24) == Some(lba)
}

/// ZFS keeps labels L2 and L3 in the last 512 KiB of the 256 KiB-aligned size, each with an
/// uberblock array (1 KiB slots) from 128 KiB into the label.
fn zfs_end_labels(ends: &DeviceEnds<'_>) -> bool {
    let aligned = ends.size & !(ZFS_LABEL - 1);
    if aligned < 4 * ZFS_LABEL {
        return false;
    }
    [aligned - 2 * ZFS_LABEL, aligned - ZFS_LABEL]
        .iter()
        .any(|label| {
            (0..128u64).any(|slot| {
                let magic = ends.at(label + (128 << 10) + slot * 1024, 8);
                magic.is_some_and(|m| {
                    m == ZFS_UBERBLOCK_MAGIC.to_le_bytes() || m == ZFS_UBERBLOCK_MAGIC.to_be_bytes()
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 64 * MIB;

    /// A 64 MiB device that is zero except for `writes` (offset, bytes).
    fn leftovers(writes: &[(u64, Vec<u8>)]) -> Vec<String> {
        let (mut head, mut tail) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        for (at, bytes) in writes {
            let (buf, start) = if *at < MIB {
                (&mut head, *at)
            } else {
                (&mut tail, at - (SIZE - MIB))
            };
            buf[start as usize..start as usize + bytes.len()].copy_from_slice(bytes);
        }
        leftover_metadata(&DeviceEnds {
            head: &head,
            tail: &tail,
            size: SIZE,
        })
    }

    fn gpt_header(lba: u64) -> Vec<u8> {
        let mut header = GPT_SIGNATURE.to_vec();
        header.extend(0x0001_0000u32.to_le_bytes());
        header.extend(92u32.to_le_bytes());
        header.extend([0u8; 8]);
        header.extend(lba.to_le_bytes());
        header
    }

    #[test]
    fn zeroed_ends_hold_nothing() {
        assert!(leftovers(&[]).is_empty());
    }

    #[test]
    fn gpt_headers_left_at_either_end_are_found_for_both_sector_sizes() {
        let last_512 = SIZE / 512 - 1;
        let found = leftovers(&[(last_512 * 512, gpt_header(last_512))]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("backup GPT"), "{found:?}");
        let last_4k = SIZE / 4096 - 1;
        assert!(leftovers(&[(last_4k * 4096, gpt_header(last_4k))])[0].contains("4096"));
        assert!(leftovers(&[(512, gpt_header(1))])[0].contains("primary GPT"));
        // A header that does not record its own position is not a real one.
        assert!(leftovers(&[(last_512 * 512, gpt_header(7))]).is_empty());
    }

    #[test]
    fn raid_and_zfs_metadata_at_the_end_are_found() {
        let md090 = (SIZE & !0xffff) - (64 << 10);
        let md10 = ((SIZE / 512 - 16) & !7) * 512;
        let mut md10_bytes = MD_MAGIC.to_le_bytes().to_vec();
        md10_bytes.extend(1u32.to_le_bytes());
        let zfs_l3 = SIZE - ZFS_LABEL + (128 << 10) + 5 * 1024;
        let cases = [
            ((md090, MD_MAGIC.to_be_bytes().to_vec()), "md 0.90"),
            ((md10, md10_bytes), "md 1.0"),
            ((SIZE - 512, DDF_MAGIC.to_be_bytes().to_vec()), "DDF"),
            ((SIZE - 1024, IMSM_SIGNATURE.to_vec()), "IMSM"),
            ((zfs_l3, ZFS_UBERBLOCK_MAGIC.to_le_bytes().to_vec()), "ZFS"),
        ];
        for (write, want) in cases {
            let found = leftovers(&[write]);
            assert!(
                found.len() == 1 && found[0].contains(want),
                "{want}: {found:?}"
            );
        }
    }
}
