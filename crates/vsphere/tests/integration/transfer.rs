//! Datastore transfers over `/folder`: ranged and whole GETs, resume, truncation, PUT, DELETE,
//! directories.

use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use vbm_vsphere::{ByteStream, Client, DatastoreFile, DatastorePath, Error, Vm};

use super::common::{AWKWARD, connect, stat, testbed};

async fn collect(mut stream: ByteStream) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The flat extent of a VM's disk, found through its descriptor.
async fn flat_of(client: &Client, vm: &Vm, disk: usize) -> DatastoreFile {
    let descriptor_file = vm
        .datastore_file(vm.disks[disk].datastore_path().unwrap())
        .unwrap();
    let descriptor = client.read_descriptor(&descriptor_file).await.unwrap();
    assert_eq!(descriptor.capacity_bytes(), vm.disks[disk].capacity_bytes);
    assert!(!descriptor.has_parent());
    descriptor_file.sibling(descriptor.flat_extent_file().unwrap())
}

#[tokio::test]
async fn range_and_whole_file_reads_match_the_disk() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let info = tb.control().info().await.unwrap();
    let local = std::fs::read(&info.vm(&vm.name).unwrap().disks[1].flat_path).unwrap();
    // The second disk is on "ds 2": a datastore name with a space, in a datacenter inside folders.
    let flat = flat_of(&client, &vm, 1).await;
    let whole = collect(client.get(&flat).unwrap()).await.unwrap();
    assert_eq!(whole.len() as u64, vm.disks[1].capacity_bytes);
    assert_eq!(
        hex::encode(Sha256::digest(&whole)),
        tb.control()
            .disk_sha256(&vm.moref.value, 2001)
            .await
            .unwrap()
    );
    assert_eq!(whole, local);
    for (offset, length) in [
        (0u64, 1u64),
        (12345, 4 << 20),
        (vm.disks[1].capacity_bytes - 7, 7),
    ] {
        let part = collect(client.get_range(&flat, offset, length).unwrap())
            .await
            .unwrap();
        assert_eq!(part, &local[offset as usize..(offset + length) as usize]);
    }
    // Past the end of the file: an error, never a short read.
    let err = collect(
        client
            .get_range(&flat, vm.disks[1].capacity_bytes - 10, 20)
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::BadRange { .. }), "{err:?}");
    let missing = DatastoreFile::new(
        flat.datacenter_path.clone().unwrap(),
        flat.path.parent().join("nope.vmdk"),
    );
    let err = collect(client.get(&missing).unwrap()).await.unwrap_err();
    assert!(vbm_vsphere::datastore::is_not_found(&err), "{err:?}");
    assert_eq!(
        client.file_size(&flat).await.unwrap(),
        vm.disks[1].capacity_bytes
    );
    client.logout().await.unwrap();
}

// covers N2: a connection dropped mid-download resumes from the last byte received.
#[tokio::test]
async fn a_truncated_transfer_resumes_from_the_last_offset() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let flat = flat_of(&client, &vm, 0).await;
    let capacity = vm.disks[0].capacity_bytes;
    tb.control()
        .add_fault(json!({"kind": "transfer_truncate", "path_contains": "-flat.vmdk", "after_bytes": 300_000, "count": 2}))
        .await
        .unwrap();
    tb.control().reset_stats().await.unwrap();
    let data = collect(client.get_range(&flat, 1000, capacity - 1000).unwrap())
        .await
        .unwrap();
    assert_eq!(data.len() as u64, capacity - 1000);
    assert_eq!(hex::encode(Sha256::digest(&data[..])), {
        let local = std::fs::read(
            &tb.control()
                .info()
                .await
                .unwrap()
                .vm(&vm.name)
                .unwrap()
                .disks[0]
                .flat_path,
        )
        .unwrap();
        hex::encode(Sha256::digest(&local[1000..]))
    });
    let faults = tb.control().faults().await.unwrap();
    assert_eq!(faults[0]["fired"], 2, "{faults}");
    let stats = tb.control().stats().await.unwrap();
    let fetched = stat(&stats, &["folder_get_bytes", "total"]);
    // Resumed, not restarted: at most the truncated bytes are fetched twice.
    assert!(
        fetched as u64 <= capacity - 1000 + 2 * 300_000,
        "fetched {fetched}"
    );
    client.logout().await.unwrap();
}

// covers N3: a body that keeps ending early is never returned as complete.
#[tokio::test]
async fn persistent_truncation_is_an_error_naming_the_byte_counts() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let flat = flat_of(&client, &vm, 0).await;
    tb.control()
        .add_fault(json!({"kind": "transfer_truncate", "path_contains": "-flat.vmdk", "after_bytes": 100_000, "count": 0}))
        .await
        .unwrap();
    let length = 2_000_000;
    let err = collect(client.get_range(&flat, 0, length).unwrap())
        .await
        .unwrap_err();
    // Initial request plus 3 resumes (fast_config), 100 000 bytes each.
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::Truncated {
                got: 400_000,
                expected: 2_000_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.starts_with("truncated download (got 400000 of 2000000 bytes)"),
        "{text}"
    );
    client.logout().await.unwrap();
}

#[tokio::test]
async fn put_round_trip_directories_and_delete() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let inventory = client.infrastructure().await.unwrap();
    let dc = inventory
        .datacenters
        .iter()
        .find(|d| d.name == "DC West")
        .unwrap();
    let dir = DatastorePath::new("ds 2", "restore #1/Ünï & co");
    client
        .make_directory(&dir, Some(&dc.moref), true)
        .await
        .unwrap();
    client
        .make_directory(&dir, Some(&dc.moref), true)
        .await
        .unwrap();

    // 5 MiB + 3 bytes in odd-sized chunks, generated on the fly (never one buffer).
    let length: u64 = (5 << 20) + 3;
    let chunk = move |i: u64| -> bytes::Bytes {
        let size = 65_537.min(length - i * 65_537) as usize;
        bytes::Bytes::from(
            (0..size)
                .map(|j| ((i as usize * 31 + j) % 251) as u8)
                .collect::<Vec<u8>>(),
        )
    };
    let chunks = length.div_ceil(65_537);
    let mut expected = Sha256::new();
    for i in 0..chunks {
        expected.update(chunk(i));
    }
    let file = DatastoreFile::new(dc.path.clone(), dir.join("disk 1+2-flat.vmdk"));
    let body =
        futures_util::stream::iter(0..chunks).map(move |i| Ok::<_, std::io::Error>(chunk(i)));
    client.put(&file, length, body).await.unwrap();
    let back = collect(client.get(&file).unwrap()).await.unwrap();
    assert_eq!(back.len() as u64, length);
    assert_eq!(Sha256::digest(&back), expected.finalize());

    // A stream shorter than declared is refused.
    let short = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"abc"),
    )]);
    let err = client
        .put(
            &DatastoreFile::new(dc.path.clone(), dir.join("short")),
            10,
            short,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(_) | Error::Network { .. }),
        "{err:?}"
    );

    let ds = inventory
        .datastores
        .iter()
        .find(|d| d.name == "ds 2" && d.datacenter.as_ref() == Some(&dc.moref))
        .unwrap();
    let listing = client.list_directory(&ds.moref, &dir).await.unwrap();
    let entry = listing
        .iter()
        .find(|e| e.name == "disk 1+2-flat.vmdk")
        .unwrap_or_else(|| panic!("{listing:?}"));
    assert_eq!(entry.size, length);
    assert_eq!(entry.path, file.path);
    assert!(!entry.is_folder());

    client.delete(&file).await.unwrap();
    let err = collect(client.get(&file).unwrap()).await.unwrap_err();
    assert!(vbm_vsphere::datastore::is_not_found(&err), "{err:?}");
    let err = client.delete(&file).await.unwrap_err();
    assert!(vbm_vsphere::datastore::is_not_found(&err), "{err:?}");
    client.logout().await.unwrap();
}

/// A minimal plain-HTTP vCenter that answers the session calls and records each PUT's request
/// head, to check what goes on the wire.
async fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sdk", listener.local_addr().unwrap());
    let puts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = puts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line.to_ascii_lowercase());
                    }
                    let length: u64 = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = Vec::new();
                    (&mut reader)
                        .take(length)
                        .read_to_end(&mut body)
                        .await
                        .unwrap();
                    let body = String::from_utf8_lossy(&body);
                    let (status, payload) = if head.starts_with("put ") {
                        record
                            .lock()
                            .unwrap()
                            .push((head.clone(), body.len() as u64));
                        ("201 Created", String::new())
                    } else {
                        let (method, inner) = if body.contains("<RetrieveServiceContent") {
                            (
                                "RetrieveServiceContent",
                                "<returnval><rootFolder type=\"Folder\">group-d1</rootFolder><propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector><viewManager type=\"ViewManager\">ViewManager</viewManager><about><apiType>VirtualCenter</apiType><apiVersion>8.0.3.0</apiVersion></about><sessionManager type=\"SessionManager\">SessionManager</sessionManager></returnval>",
                            )
                        } else if body.contains("<Login") {
                            ("Login", "<returnval><key>k</key></returnval>")
                        } else if body.contains("<Logout") {
                            ("Logout", "")
                        } else {
                            (
                                "RetrievePropertiesEx",
                                "<returnval><objects><obj type=\"SessionManager\">SessionManager</obj><propSet><name>currentSession</name><val><key>k</key></val></propSet></objects></returnval>",
                            )
                        };
                        (
                            "200 OK",
                            format!(
                                "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><{method}Response xmlns=\"urn:vim25\">{inner}</{method}Response></soapenv:Body></soapenv:Envelope>"
                            ),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nSet-Cookie: vmware_soap_session=\"abc\"; Path=/\r\n\r\n{payload}",
                        payload.len()
                    );
                    if reader
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, puts)
}

#[tokio::test]
async fn put_streams_with_content_length_and_the_session_cookie() {
    let (url, puts) = recording_server().await;
    let opts = vbm_vsphere::ConnectOptions::new(url, "u", "p").config(super::common::fast_config());
    let client = Client::connect(opts).await.unwrap();
    let length: u64 = 3 << 20;
    let body = futures_util::stream::iter(0..48)
        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 65536])));
    let file = DatastoreFile::new("DC", DatastorePath::new("ds", "dir/x-flat.vmdk"));
    client.put(&file, length, body).await.unwrap();
    let puts = puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1);
    let (head, received) = &puts[0];
    assert!(
        head.starts_with("put /folder/dir/x-flat.vmdk?dcpath=dc&dsname=ds http/1.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {length}")),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(
        head.contains("cookie: vmware_soap_session=\"abc\""),
        "the raw (quoted) cookie is replayed: {head}"
    );
    assert_eq!(*received, length);
}
