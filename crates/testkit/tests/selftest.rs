//! Testbed self-test: proves, with SOAP requests written by hand for this test (no vbm client
//! code), that the testbed serves what every later test relies on — login, the VM list, snapshots
//! with changeIds, simulated guest writes, `QueryChangedDiskAreas` paging that returns exactly the
//! written blocks, ranged GET, PUT, and HTTPS with the thumbprint it reports.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sha2::{Digest, Sha256};
use vbm_testkit::Testbed;

/// CBT granularity of the testbed specs (`cbt_block_size`).
const BLOCK: u64 = 65536;

struct Soap {
    http: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

impl Soap {
    async fn call(&self, body: &str) -> (u16, String) {
        let envelope = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
        );
        let mut request = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(envelope);
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie.as_str());
        }
        let response = request.send().await.expect("SOAP request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("SOAP body"))
    }

    async fn ok(&self, body: &str) -> String {
        let (status, text) = self.call(body).await;
        assert_eq!(status, 200, "SOAP call failed: {text}");
        text
    }

    /// Polls a task until it ends; returns the response holding its final info.
    async fn wait_task(&self, task: &str) -> String {
        for _ in 0..600 {
            let text = self
                .ok(&format!(
                    r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">{pc}</_this><specSet><propSet><type>Task</type><pathSet>info</pathSet></propSet><objectSet><obj type="Task">{task}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#,
                    pc = PROPERTY_COLLECTOR
                ))
                .await;
            let state = between(&text, "<state>", "</state>").unwrap_or_default();
            if state == "success" || state == "error" {
                assert_eq!(state, "success", "task {task} failed: {text}");
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {task} did not finish");
    }
}

const PROPERTY_COLLECTOR: &str = "propertyCollector";

/// Text between the first `start` and the following `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// Every text between `start` and `end`.
fn all_between<'a>(mut text: &'a str, start: &str, end: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    while let Some(from) = text.find(start) {
        let rest = &text[from + start.len()..];
        let Some(to) = rest.find(end) else { break };
        out.push(&rest[..to]);
        text = &rest[to + end.len()..];
    }
    out
}

/// The moref text of `<returnval type="…">moref</returnval>`.
fn returnval_moref(text: &str) -> String {
    let open = text.find("<returnval type=").expect("returnval moref");
    let after = &text[open..];
    between(after, ">", "</returnval>")
        .expect("moref text")
        .to_owned()
}

#[tokio::test]
async fn testbed_serves_login_inventory_snapshots_cbt_and_transfers() {
    let tb = Testbed::start("default").await.expect("testbed starts");
    let info = tb.control().info().await.expect("control info");
    let http = reqwest::Client::builder().build().unwrap();
    let mut soap = Soap {
        http: http.clone(),
        url: tb.plain_sdk_url.clone(),
        cookie: None,
    };

    // Service content, then a bad and a good login.
    let content = soap
        .ok(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#)
        .await;
    let session_manager =
        between(&content, r#"<sessionManager type="SessionManager">"#, "<").unwrap();
    let view_manager = between(&content, r#"<viewManager type="ViewManager">"#, "<").unwrap();
    let root_folder = between(&content, r#"<rootFolder type="Folder">"#, "<").unwrap();
    let (status, bad) = soap
        .call(&format!(
            r#"<Login xmlns="urn:vim25"><_this type="SessionManager">{session_manager}</_this><userName>{}</userName><password>wrong</password></Login>"#,
            tb.user
        ))
        .await;
    assert_eq!(status, 500, "a wrong password must fail: {bad}");
    assert!(bad.contains("InvalidLogin"), "{bad}");
    let login = format!(
        r#"<Login xmlns="urn:vim25"><_this type="SessionManager">{session_manager}</_this><userName>{}</userName><password>{}</password></Login>"#,
        tb.user, tb.password
    );
    let response = http
        .post(&soap.url)
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("SOAPAction", "urn:vim25/6.5")
        .body(format!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{login}</soapenv:Body></soapenv:Envelope>"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("vmware_soap_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();
    soap.cookie = Some(cookie.clone());

    // The VM list through a container view equals the testbed's inventory.
    let view = soap
        .ok(&format!(
            r#"<CreateContainerView xmlns="urn:vim25"><_this type="ViewManager">{view_manager}</_this><container type="Folder">{root_folder}</container><type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>"#
        ))
        .await;
    let view = returnval_moref(&view);
    let listing = soap
        .ok(&format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><_this type="PropertyCollector">{PROPERTY_COLLECTOR}</_this><specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet><objectSet><obj type="ContainerView">{view}</obj><skip>true</skip><selectSet xsi:type="TraversalSpec"><name>v</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options/></RetrievePropertiesEx>"#
        ))
        .await;
    let mut names: Vec<String> = all_between(&listing, "<objects>", "</objects>")
        .into_iter()
        .filter_map(|o| {
            let val = &o[o.find("<val")?..];
            Some(between(val, ">", "</val>")?.to_owned())
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = info.vms.iter().map(|vm| vm.name.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);

    // A VM with a thin disk: enable CBT, snapshot, guest write, second snapshot.
    // The largest thin disk spans several QueryChangedDiskAreas windows.
    let (vm, disk) = info
        .vms
        .iter()
        .flat_map(|vm| vm.disks.iter().filter(|d| d.thin).map(move |d| (vm, d)))
        .max_by_key(|(_, d)| d.capacity_bytes)
        .expect("a VM with a thin disk");
    let task = soap
        .ok(&format!(
            r#"<ReconfigVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this><spec><changeTrackingEnabled>true</changeTrackingEnabled></spec></ReconfigVM_Task>"#,
            vm.moref
        ))
        .await;
    soap.wait_task(&returnval_moref(&task)).await;
    let snapshot = |name: &str| {
        format!(
            r#"<CreateSnapshot_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this><name>{name}</name><description>selftest</description><memory>false</memory><quiesce>false</quiesce></CreateSnapshot_Task>"#,
            vm.moref
        )
    };
    let task = soap.ok(&snapshot("selftest-1")).await;
    let done = soap.wait_task(&returnval_moref(&task)).await;
    let snap1 = between(&done, r#"type="VirtualMachineSnapshot">"#, "<")
        .expect("snapshot moref")
        .to_owned();
    let change_id = |config: &str| -> String {
        // The disk with our device key carries the changeId in its backing.
        let key_tag = format!("<key>{}</key>", disk.key);
        let from = config.find(&key_tag).expect("disk in snapshot config");
        between(&config[from..], "<changeId>", "</changeId>")
            .expect("changeId on the snapshot disk")
            .to_owned()
    };
    let config_of = |snap: String| {
        format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">{PROPERTY_COLLECTOR}</_this><specSet><propSet><type>VirtualMachineSnapshot</type><pathSet>config.hardware.device</pathSet></propSet><objectSet><obj type="VirtualMachineSnapshot">{snap}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#
        )
    };
    let change_id_1 = change_id(&soap.ok(&config_of(snap1.clone())).await);

    // An unaligned guest write spanning three CBT blocks.
    let offset = 3 * BLOCK + 1000;
    let length = 2 * BLOCK;
    tb.control()
        .write(&vm.name, disk.key, offset, length, 7)
        .await
        .expect("guest write");
    let task = soap.ok(&snapshot("selftest-2")).await;
    let done = soap.wait_task(&returnval_moref(&task)).await;
    let snap2 = between(&done, r#"type="VirtualMachineSnapshot">"#, "<")
        .unwrap()
        .to_owned();
    let change_id_2 = change_id(&soap.ok(&config_of(snap2.clone())).await);
    assert_ne!(change_id_1, change_id_2);

    // QueryChangedDiskAreas, paged by the caller, reports exactly the written blocks.
    let mut start = 0u64;
    let mut areas = Vec::new();
    let mut pages = 0;
    while start < disk.capacity_bytes {
        let page = soap
            .ok(&format!(
                r#"<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this><snapshot type="VirtualMachineSnapshot">{snap2}</snapshot><deviceKey>{}</deviceKey><startOffset>{start}</startOffset><changeId>{change_id_1}</changeId></QueryChangedDiskAreas>"#,
                vm.moref, disk.key
            ))
            .await;
        let window_start: u64 = between(&page, "<startOffset>", "<")
            .unwrap()
            .parse()
            .unwrap();
        let window_len: u64 = between(&page, "<length>", "<").unwrap().parse().unwrap();
        assert_eq!(window_start, start);
        assert!(window_len > 0, "zero-length window: {page}");
        for area in all_between(&page, "<changedArea>", "</changedArea>") {
            let a: u64 = between(area, "<start>", "<").unwrap().parse().unwrap();
            let l: u64 = between(area, "<length>", "<").unwrap().parse().unwrap();
            areas.push((a, l));
        }
        start = window_start + window_len;
        pages += 1;
    }
    assert!(
        pages > 1,
        "the testbed must page QueryChangedDiskAreas (got {pages} page)"
    );
    let first_block = offset / BLOCK * BLOCK;
    let end_block = (offset + length).div_ceil(BLOCK) * BLOCK;
    assert_eq!(areas, vec![(first_block, end_block - first_block)]);

    // An unknown changeId is a FileFault, as on vCenter.
    let (status, fault) = soap
        .call(&format!(
            r#"<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this><snapshot type="VirtualMachineSnapshot">{snap2}</snapshot><deviceKey>{}</deviceKey><startOffset>0</startOffset><changeId>52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/99</changeId></QueryChangedDiskAreas>"#,
            vm.moref, disk.key
        ))
        .await;
    assert_eq!(status, 500);
    assert!(fault.contains("FileFault"), "{fault}");

    // Ranged GET of the flat file returns 206 and the bytes on disk.
    let (ds, path) = disk.file.trim_start_matches('[').split_once("] ").unwrap();
    let flat_path = path.replace(".vmdk", "-flat.vmdk");
    let base = tb.plain_sdk_url.trim_end_matches("/sdk");
    let dc = info
        .rest
        .get("datacenters")
        .and_then(|d| d.get(0))
        .and_then(|d| d.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("DC0");
    let folder_url = |p: &str| {
        let mut url = reqwest::Url::parse(&format!("{base}/folder")).unwrap();
        url.path_segments_mut().unwrap().extend(p.split('/'));
        url.query_pairs_mut()
            .append_pair("dcPath", dc)
            .append_pair("dsName", ds);
        url
    };
    let unauthenticated = http.get(folder_url(&flat_path)).send().await.unwrap();
    assert_eq!(
        unauthenticated.status(),
        401,
        "/folder must require a session"
    );
    let range = http
        .get(folder_url(&flat_path))
        .header("Cookie", cookie.as_str())
        .header("Range", format!("bytes={}-{}", first_block, end_block - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    let content_range = range
        .headers()
        .get("content-range")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        content_range,
        format!(
            "bytes {}-{}/{}",
            first_block,
            end_block - 1,
            disk.capacity_bytes
        )
    );
    let got = range.bytes().await.unwrap();
    let on_disk = std::fs::read(&disk.flat_path).unwrap();
    assert_eq!(&got[..], &on_disk[first_block as usize..end_block as usize]);
    assert!(got.iter().any(|b| *b != 0), "the written region holds data");

    // PUT, then GET the same bytes back.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let put = http
        .put(folder_url("selftest dir/upload #1.bin"))
        .header("Cookie", cookie.as_str())
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT answered {}", put.status());
    let back = http
        .get(folder_url("selftest dir/upload #1.bin"))
        .header("Cookie", cookie.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.bytes().await.unwrap().as_ref(), payload.as_slice());

    // Clean up: remove our snapshots, log out.
    for snap in [snap2, snap1] {
        let task = soap
            .ok(&format!(
                r#"<RemoveSnapshot_Task xmlns="urn:vim25"><_this type="VirtualMachineSnapshot">{snap}</_this><removeChildren>false</removeChildren><consolidate>true</consolidate></RemoveSnapshot_Task>"#
            ))
            .await;
        soap.wait_task(&returnval_moref(&task)).await;
    }
    let left = tb.control().snapshot_names(&vm.name).await.unwrap();
    assert!(
        !left.iter().any(|n| n.starts_with("selftest")),
        "snapshots left: {left:?}"
    );
    soap.ok(&format!(r#"<Logout xmlns="urn:vim25"><_this type="SessionManager">{session_manager}</_this></Logout>"#)).await;
    let (status, after) = soap
        .call(&format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">{PROPERTY_COLLECTOR}</_this><specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet><objectSet><obj type="VirtualMachine">{}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#,
            vm.moref
        ))
        .await;
    assert_eq!(
        status, 500,
        "a logged-out session must not be served: {after}"
    );
    assert!(after.contains("NotAuthenticated"), "{after}");
}

#[tokio::test]
async fn testbed_https_presents_the_certificate_it_reports() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tb = Testbed::start("default").await.expect("testbed starts");
    let der = rustls_pemfile::certs(&mut tb.cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .unwrap();
    let sha256 = hex::encode_upper(Sha256::digest(der.as_ref()));
    let colon = sha256
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(colon, tb.thumbprint_sha256);

    // With the reported certificate as the only root, HTTPS works and answers SOAP.
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(tb.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let soap = Soap {
        http: client,
        url: tb.sdk_url.clone(),
        cookie: None,
    };
    let content = soap
        .ok(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#)
        .await;
    assert!(content.contains("VirtualCenter"), "{content}");
}
