//! Changed Block Tracking: `QueryChangedDiskAreas` with the window loop done for the caller.
//!
//! The server answers one window of the disk per call (`startOffset`, `length`) with the changed
//! areas inside it; an empty list does not mean the end. Calling it once shipped silently
//! incomplete incrementals in a mature product, so [`Client::query_changed_disk_areas`] loops
//! until the window reaches the capacity and refuses to return anything if a window makes no
//! progress.

use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::types::{ChangeId, MoRef};
use crate::xml::{Node, Writer};

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DiskExtent {
    /// First byte.
    pub start: u64,
    /// Length in bytes (never 0 in results).
    pub length: u64,
}

impl DiskExtent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }
}

/// One answer: the window and the changed areas in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskChangeInfo {
    pub(crate) start_offset: u64,
    pub(crate) length: u64,
    pub(crate) changed: Vec<DiskExtent>,
}

impl DiskChangeInfo {
    pub(crate) fn from_node(node: &Node) -> Result<Self> {
        let num = |n: &Node, name: &str| -> Result<u64> {
            let v = n
                .child_num::<i64>(name)?
                .ok_or_else(|| Error::Xml(format!("<{}> lacks <{name}>", n.name)))?;
            u64::try_from(v).map_err(|_| Error::Xml(format!("negative {name} in DiskChangeInfo")))
        };
        let changed = node
            .children_named("changedArea")
            .map(|a| {
                Ok(DiskExtent {
                    start: num(a, "start")?,
                    length: num(a, "length")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            start_offset: num(node, "startOffset")?,
            length: num(node, "length")?,
            changed,
        })
    }
}

/// Sorts, clamps to `capacity`, drops empty and merges overlapping or adjacent extents.
pub(crate) fn normalise(mut extents: Vec<DiskExtent>, capacity: u64) -> Vec<DiskExtent> {
    extents.sort();
    let mut out: Vec<DiskExtent> = Vec::with_capacity(extents.len());
    for e in extents {
        let end = e.end().min(capacity);
        if e.start >= end {
            continue;
        }
        match out.last_mut() {
            Some(last) if e.start <= last.end() => {
                let new_end = last.end().max(end);
                last.length = new_end - last.start;
            }
            _ => out.push(DiskExtent {
                start: e.start,
                length: end - e.start,
            }),
        }
    }
    out
}

impl Client {
    /// One QueryChangedDiskAreas call.
    async fn query_changed_window(
        &self,
        vm: &MoRef,
        snapshot: Option<&MoRef>,
        device_key: i32,
        start_offset: u64,
        change_id: &ChangeId,
    ) -> Result<DiskChangeInfo> {
        let mut w = Writer::new();
        // QueryChangedDiskAreas: _this, snapshot?, deviceKey, startOffset, changeId.
        w.moref("_this", vm)
            .opt_moref("snapshot", snapshot)
            .num("deviceKey", device_key)
            .num("startOffset", start_offset)
            .text("changeId", change_id.as_str());
        let response = self
            .invoke("QueryChangedDiskAreas", &w.finish(), CallKind::Idempotent)
            .await?;
        let info = response
            .child("returnval")
            .ok_or_else(|| Error::Xml("QueryChangedDiskAreas without returnval".into()))?;
        DiskChangeInfo::from_node(info)
    }

    /// Every area of disk `device_key` that changed since `change_id` (or every allocated area
    /// for [`ChangeId::all`]), as seen by `snapshot` — all windows up to `capacity`, sorted and
    /// merged.
    ///
    /// Pass the snapshot taken for this backup and the changeId recorded from the previous
    /// backup's snapshot. An invalid or reset changeId is a FileFault ([`Error::is_file_fault`]):
    /// the caller falls back to a full read.
    ///
    /// # Errors
    /// [`Error::Fault`] (FileFault for an unknown changeId, NotSupported/InvalidArgument when CBT
    /// is off); [`Error::Xml`] when a window makes no progress (never a partial result);
    /// transport errors.
    pub async fn query_changed_disk_areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        device_key: i32,
        change_id: &ChangeId,
        capacity: u64,
    ) -> Result<Vec<DiskExtent>> {
        let mut offset = 0u64;
        let mut extents = Vec::new();
        let mut calls = 0u64;
        while offset < capacity {
            let info = self
                .query_changed_window(vm, Some(snapshot), device_key, offset, change_id)
                .await?;
            calls += 1;
            if info.start_offset > offset {
                return Err(Error::Xml(format!(
                    "QueryChangedDiskAreas skipped bytes {offset}..{} of disk {device_key}",
                    info.start_offset
                )));
            }
            let end = info.start_offset.saturating_add(info.length);
            if info.length == 0 || end <= offset {
                return Err(Error::Xml(format!(
                    "QueryChangedDiskAreas made no progress at offset {offset} of disk {device_key} \
(window {}+{})",
                    info.start_offset, info.length
                )));
            }
            extents.extend(info.changed);
            offset = end;
        }
        let extents = normalise(extents, capacity);
        tracing::debug!(vm = %vm, device_key, calls, extents = extents.len(), "changed disk areas");
        Ok(extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, length: u64) -> DiskExtent {
        DiskExtent { start, length }
    }

    #[test]
    fn extents_merge_clamp_and_sort() {
        let got = normalise(
            vec![
                e(100, 50),
                e(0, 10),
                e(10, 5),
                e(120, 100),
                e(500, 0),
                e(990, 100),
            ],
            1000,
        );
        assert_eq!(got, vec![e(0, 15), e(100, 120), e(990, 10)]);
        assert_eq!(normalise(vec![e(2000, 5)], 1000), vec![]);
    }

    #[test]
    fn change_info_decodes_and_rejects_negatives() {
        let n = Node::parse("<returnval><startOffset>0</startOffset><length>1048576</length><changedArea><start>0</start><length>65536</length></changedArea><changedArea><start>131072</start><length>65536</length></changedArea></returnval>").unwrap();
        let info = DiskChangeInfo::from_node(&n).unwrap();
        assert_eq!(info.length, 1_048_576);
        assert_eq!(info.changed, vec![e(0, 65536), e(131_072, 65536)]);
        let bad =
            Node::parse("<returnval><startOffset>-1</startOffset><length>1</length></returnval>")
                .unwrap();
        assert!(DiskChangeInfo::from_node(&bad).is_err());
        let missing = Node::parse("<returnval><length>1</length></returnval>").unwrap();
        assert!(DiskChangeInfo::from_node(&missing).is_err());
    }
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::fake::{self, Fake, fault, ok};

    const MIB: u64 = 1 << 20;

    fn window(start: u64, length: u64, areas: &[(u64, u64)]) -> String {
        let mut s =
            format!("<returnval><startOffset>{start}</startOffset><length>{length}</length>");
        for (a, l) in areas {
            s.push_str(&format!(
                "<changedArea><start>{a}</start><length>{l}</length></changedArea>"
            ));
        }
        s.push_str("</returnval>");
        s
    }

    fn start_of(body: &str) -> u64 {
        let from = body.find("<startOffset>").unwrap() + "<startOffset>".len();
        let to = body[from..].find('<').unwrap() + from;
        body[from..to].parse().unwrap()
    }

    #[tokio::test]
    async fn every_window_is_queried_and_areas_merged() {
        // 3.5 MiB disk, 1 MiB windows; the second window reports nothing (not the end!).
        let f = Fake::new(|m, body, _| {
            (m == "QueryChangedDiskAreas").then(|| {
                let start = start_of(body);
                let areas: &[(u64, u64)] = match start / MIB {
                    0 => &[(0, 65536), (MIB - 65536, 65536)],
                    1 => &[],
                    2 => &[(2 * MIB, 65536), (3 * MIB - 4096, 4096)],
                    _ => &[(3 * MIB, 4096), (3 * MIB + 8192, MIB)],
                };
                ok(m, &window(start, MIB, areas))
            })
        });
        let c = fake::client(&f).await.unwrap();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let snap = MoRef::new("VirtualMachineSnapshot", "snapshot-2");
        let got = c
            .query_changed_disk_areas(
                &vm,
                &snap,
                2000,
                &ChangeId::new("52 aa/3"),
                3 * MIB + MIB / 2,
            )
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                DiskExtent {
                    start: 0,
                    length: 65536
                },
                DiskExtent {
                    start: MIB - 65536,
                    length: 65536
                },
                DiskExtent {
                    start: 2 * MIB,
                    length: 65536
                },
                DiskExtent {
                    start: 3 * MIB - 4096,
                    length: 8192
                },
                DiskExtent {
                    start: 3 * MIB + 8192,
                    length: MIB / 2 - 8192
                },
            ]
        );
        assert_eq!(f.count("QueryChangedDiskAreas"), 4);
        let first = &f.bodies("QueryChangedDiskAreas")[0];
        assert!(first.contains("<_this type=\"VirtualMachine\">vm-1</_this><snapshot type=\"VirtualMachineSnapshot\">snapshot-2</snapshot><deviceKey>2000</deviceKey><startOffset>0</startOffset><changeId>52 aa/3</changeId>"), "{first}");
    }

    #[tokio::test]
    async fn a_zero_length_window_is_an_error_not_an_endless_loop() {
        let f = Fake::new(|m, body, _| {
            (m == "QueryChangedDiskAreas").then(|| ok(m, &window(start_of(body), 0, &[])))
        });
        let c = fake::client(&f).await.unwrap();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let err = c
            .query_changed_disk_areas(&vm, &vm, 1, &ChangeId::all(), MIB)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no progress"), "{err}");
        assert_eq!(f.count("QueryChangedDiskAreas"), 1);
    }

    #[tokio::test]
    async fn a_window_that_skips_bytes_is_an_error() {
        let f = Fake::new(|m, body, _| {
            (m == "QueryChangedDiskAreas").then(|| ok(m, &window(start_of(body) + 512, MIB, &[])))
        });
        let c = fake::client(&f).await.unwrap();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        assert!(
            c.query_changed_disk_areas(&vm, &vm, 1, &ChangeId::all(), MIB)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_unknown_change_id_is_a_file_fault() {
        let f = Fake::new(|m, _, _| {
            (m == "QueryChangedDiskAreas").then(|| {
                fault(
                    500,
                    "FileFault",
                    "Error caused by file /vmfs/volumes/x/web-ctk.vmdk",
                )
            })
        });
        let c = fake::client(&f).await.unwrap();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let err = c
            .query_changed_disk_areas(&vm, &vm, 1, &ChangeId::new("bogus/1"), MIB)
            .await
            .unwrap_err();
        assert!(err.is_file_fault(), "{err:?}");
        assert_eq!(f.count("QueryChangedDiskAreas"), 1);
    }
}
