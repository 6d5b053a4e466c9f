//! Datastore files over the `/folder` HTTP endpoint (GET with Range and resume, streaming PUT,
//! DELETE, HEAD) and through the SOAP API (MakeDirectory, DeleteDatastoreFile, directory
//! listings with sizes).
//!
//! Downloads are async byte streams that check every response: a ranged read must answer `206`
//! with exactly the requested `Content-Range` (a `200` is accepted only for a whole-file read
//! from offset 0), a body that ends early is a truncation, and a broken or stalled connection
//! resumes from the last byte received with a new ranged request, a bounded number of times
//! (N2, N3, N4). Nothing is ever padded or silently shortened.

mod download;
mod upload;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::fault::FaultKind;
use crate::property_collector::PropertySpec;
use crate::soap;
use crate::types::{DatastorePath, MoRef};
use crate::xml::Writer;

/// A stream of bytes from a datastore file.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Everything except RFC 3986 unreserved characters is encoded, in path segments and query
/// values alike: spaces, `#`, `&`, `+`, `%`, `=`, `?`, `/` inside a value, non-ASCII (as UTF-8).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A file on a datastore, addressable over `/folder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatastoreFile {
    /// The datacenter's `dcPath` (`Folder1/DC0`); `None` on a standalone ESXi (`ha-datacenter`).
    pub datacenter_path: Option<String>,
    /// `[ds] dir/file`.
    pub path: DatastorePath,
}

impl DatastoreFile {
    /// A file in a datacenter.
    pub fn new(datacenter_path: impl Into<String>, path: DatastorePath) -> Self {
        Self {
            datacenter_path: Some(datacenter_path.into()),
            path,
        }
    }

    /// Another file in the same directory (e.g. the flat extent named by a descriptor).
    pub fn sibling(&self, name: &str) -> Self {
        Self {
            datacenter_path: self.datacenter_path.clone(),
            path: self.path.parent().join(name),
        }
    }

    /// `/folder/<path>?dcPath=…&dsName=…` below `origin` (`https://host[:port]/`), with every
    /// path segment and query value percent-encoded.
    pub fn url(&self, origin: &url::Url) -> String {
        let mut out = String::new();
        out.push_str(origin.as_str().trim_end_matches('/'));
        out.push_str("/folder");
        for segment in self.path.path.split('/').filter(|s| !s.is_empty()) {
            out.push('/');
            out.extend(utf8_percent_encode(segment, STRICT));
        }
        out.push('?');
        if let Some(dc) = &self.datacenter_path {
            out.push_str("dcPath=");
            out.extend(utf8_percent_encode(dc, STRICT));
            out.push('&');
        }
        out.push_str("dsName=");
        out.extend(utf8_percent_encode(&self.path.datastore, STRICT));
        out
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirEntry {
    /// The entry's name (relative to the listed directory).
    pub name: String,
    /// Its full datastore path.
    pub path: DatastorePath,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// The FileInfo subtype: `FolderFileInfo`, `VmDiskFileInfo`, `VmConfigFileInfo`, `FileInfo`, …
    pub kind: String,
    /// Modification time as the server wrote it.
    pub modified: Option<String>,
}

impl DirEntry {
    /// Whether this entry is a directory.
    pub fn is_folder(&self) -> bool {
        self.kind == "FolderFileInfo"
    }
}

impl Client {
    /// Reads a whole (small) file into memory: descriptors, `.vmx`, `.nvram`.
    ///
    /// # Errors
    /// As [`Client::get`]; [`Error::InvalidInput`] when the file exceeds `limit` bytes.
    pub async fn get_bytes(&self, file: &DatastoreFile, limit: usize) -> Result<Vec<u8>> {
        let mut stream = self.get(file)?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(Error::InvalidInput(format!(
                    "{} is larger than {limit} bytes",
                    file.path
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads and parses a VMDK descriptor (at most 1 MiB).
    ///
    /// # Errors
    /// As [`Client::get`]; [`Error::Descriptor`] when it is not a text descriptor.
    pub async fn read_descriptor(&self, file: &DatastoreFile) -> Result<crate::vmdk::Descriptor> {
        let bytes = self.get_bytes(file, 1 << 20).await?;
        crate::vmdk::Descriptor::from_bytes(&bytes)
    }

    /// The file's size (HEAD).
    ///
    /// # Errors
    /// [`Error::Http`] (404 for a missing file), transport errors.
    pub async fn file_size(&self, file: &DatastoreFile) -> Result<u64> {
        let response = self.simple_request(reqwest::Method::HEAD, file).await?;
        // Not `content_length()`: that is the body's size hint, always 0 for HEAD.
        response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::Http {
                context: format!("HEAD {}", file.path),
                status: response.status().as_u16(),
                message: "no Content-Length".into(),
                retry_after: None,
            })
    }

    /// Deletes a file over `/folder` (HTTP DELETE).
    ///
    /// # Errors
    /// [`Error::Http`] (404 when it does not exist), transport errors.
    pub async fn delete(&self, file: &DatastoreFile) -> Result<()> {
        self.simple_request(reqwest::Method::DELETE, file)
            .await
            .map(|_| ())
    }

    /// A bodiless request with re-login on 401/403 and retries of transient failures.
    async fn simple_request(
        &self,
        method: reqwest::Method,
        file: &DatastoreFile,
    ) -> Result<reqwest::Response> {
        let http = self.http()?;
        let url = file.url(&http.origin);
        let context = format!("{method} {}", file.path);
        let timeout = self.config().soap_timeout;
        let policy = &self.config().retry;
        let mut relogged = false;
        let mut retry = 0;
        loop {
            // The login generation the cookie belongs to, read before the cookie itself.
            let generation = self.login_count();
            let mut request = http.client.request(method.clone(), &url).timeout(timeout);
            if let Some(cookie) = http.cookie.header() {
                request = request.header(reqwest::header::COOKIE, cookie);
            }
            let result = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if (status == 401 || status == 403) && !relogged && !self.is_logged_out() {
                        relogged = true;
                        self.relogin(generation).await?;
                        continue;
                    }
                    if response.status().is_success() {
                        return Ok(response);
                    }
                    let retry_after = soap::retry_after(response.headers());
                    let message = soap::read_capped(response, 64 << 10)
                        .await
                        .map(|t| t.chars().take(200).collect())
                        .unwrap_or_default();
                    Err(Error::Http {
                        context: context.clone(),
                        status,
                        message,
                        retry_after,
                    })
                }
                Err(e) => Err(http.map_error(&e, &context, timeout)),
            };
            match result {
                Err(err) if err.is_retryable() && retry + 1 < policy.max_attempts => {
                    let retry_after = match &err {
                        Error::Http { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(policy.delay(retry, retry_after)).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates a directory (`FileManager.MakeDirectory`). An existing directory is success.
    ///
    /// # Errors
    /// [`Error::Fault`] (FileFault, CannotCreateFile…), transport errors.
    pub async fn make_directory(
        &self,
        path: &DatastorePath,
        datacenter: Option<&MoRef>,
        create_parents: bool,
    ) -> Result<()> {
        let file_manager = self
            .service_content()?
            .file_manager
            .ok_or_else(|| Error::Unsupported("this server has no FileManager".into()))?;
        let mut w = Writer::new();
        // MakeDirectory: _this, name, datacenter?, createParentDirectories?.
        w.moref("_this", &file_manager)
            .text("name", &path.to_string())
            .opt_moref("datacenter", datacenter)
            .bool("createParentDirectories", create_parents);
        match self
            .invoke("MakeDirectory", &w.finish(), CallKind::Idempotent)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Fault { fault, .. }) if fault.type_name == "FileAlreadyExists" => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Deletes a file or directory through the API (`DeleteDatastoreFile_Task`), e.g. where HTTP
    /// DELETE is not available.
    ///
    /// # Errors
    /// [`Error::Fault`] (FileNotFound…), [`Error::TaskOutcomeUnknown`], transport errors.
    pub async fn delete_datastore_file(
        &self,
        path: &DatastorePath,
        datacenter: Option<&MoRef>,
    ) -> Result<()> {
        let file_manager = self
            .service_content()?
            .file_manager
            .ok_or_else(|| Error::Unsupported("this server has no FileManager".into()))?;
        let mut w = Writer::new();
        w.moref("_this", &file_manager)
            .text("name", &path.to_string())
            .opt_moref("datacenter", datacenter);
        let method = "DeleteDatastoreFile_Task";
        let response = self
            .invoke(method, &w.finish(), CallKind::Idempotent)
            .await?;
        let task = Self::task_moref(method, &response)?;
        self.wait_for_task(&task, method, &self.default_wait())
            .await
            .map(|_| ())
    }

    /// Lists a directory with file sizes (`HostDatastoreBrowser.SearchDatastore_Task`).
    ///
    /// # Errors
    /// [`Error::Fault`] (FileNotFound for a missing directory), transport errors.
    pub async fn list_directory(
        &self,
        datastore: &MoRef,
        dir: &DatastorePath,
    ) -> Result<Vec<DirEntry>> {
        let specs = [PropertySpec {
            kind: "Datastore",
            paths: &["browser"],
        }];
        let objects = self
            .retrieve_objects(&specs, std::slice::from_ref(datastore))
            .await?;
        let browser = objects
            .iter()
            .find(|o| &o.obj == datastore)
            .and_then(|o| o.moref("browser"))
            .ok_or_else(|| Error::NotFound(format!("datastore browser of {datastore}")))?;
        let mut w = Writer::new();
        // SearchDatastore_Task: _this, datastorePath, searchSpec?;
        // HostDatastoreBrowserSearchSpec: query*, details?, searchCaseInsensitive?, matchPattern*,
        // sortFoldersFirst?; FileQueryFlags: fileType, fileSize, modification, fileOwner?.
        w.moref("_this", &browser)
            .text("datastorePath", &dir.to_string());
        w.start("searchSpec")
            .start("details")
            .bool("fileType", true)
            .bool("fileSize", true)
            .bool("modification", true)
            .bool("fileOwner", false)
            .end("details")
            // vSphere lists everything without a pattern; vcsim 0.24 lists nothing without one.
            .text("matchPattern", "*")
            .end("searchSpec");
        let method = "SearchDatastore_Task";
        let response = self
            .invoke(method, &w.finish(), CallKind::Idempotent)
            .await?;
        let task = Self::task_moref(method, &response)?;
        let info = self
            .wait_for_task(&task, method, &self.default_wait())
            .await?;
        let Some(result) = info.result else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for f in result.children_named("file") {
            let name = f.child_text("path").unwrap_or_default().to_owned();
            let size = f.child_num::<i64>("fileSize")?.unwrap_or(0).max(0) as u64;
            entries.push(DirEntry {
                path: dir.join(&name),
                name,
                size,
                kind: if f.type_name().is_empty() {
                    "FileInfo".to_owned()
                } else {
                    f.type_name().to_owned()
                },
                modified: f.child_text("modification").map(str::to_owned),
            });
        }
        Ok(entries)
    }
}

/// Whether a fault means "no such file" (for callers treating deletion as idempotent).
pub fn is_not_found(err: &Error) -> bool {
    match err {
        Error::Http { status: 404, .. } => true,
        Error::Fault { fault, .. } => matches!(
            fault.kind,
            FaultKind::FileNotFound { .. } | FaultKind::NotFound
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> url::Url {
        url::Url::parse("https://vc.example:8443/").unwrap()
    }

    #[test]
    fn urls_encode_every_awkward_character() {
        let f = DatastoreFile::new(
            "Europe %2f West/DC #1",
            DatastorePath::parse("[ds & co+1] my vm #2/dïsk 100%.vmdk").unwrap(),
        );
        assert_eq!(
            f.url(&origin()),
            "https://vc.example:8443/folder/my%20vm%20%232/d%C3%AFsk%20100%25.vmdk\
?dcPath=Europe%20%252f%20West%2FDC%20%231&dsName=ds%20%26%20co%2B1"
        );
        let parsed = url::Url::parse(&f.url(&origin())).unwrap();
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(pairs[0], ("dcPath".into(), "Europe %2f West/DC #1".into()));
        assert_eq!(pairs[1], ("dsName".into(), "ds & co+1".into()));
        let segments: Vec<String> = parsed
            .path_segments()
            .unwrap()
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
            .collect();
        assert_eq!(segments, ["folder", "my vm #2", "dïsk 100%.vmdk"]);
    }

    #[test]
    fn esxi_urls_have_no_dc_path() {
        let f = DatastoreFile {
            datacenter_path: None,
            path: DatastorePath::parse("[datastore1] a/b.vmx").unwrap(),
        };
        assert_eq!(
            f.url(&origin()),
            "https://vc.example:8443/folder/a/b.vmx?dsName=datastore1"
        );
    }

    #[test]
    fn not_found_classification() {
        let e = Error::Http {
            context: String::new(),
            status: 404,
            message: String::new(),
            retry_after: None,
        };
        assert!(is_not_found(&e));
        let f = Error::Fault {
            method: "x".into(),
            fault: Box::new(crate::fault::Fault::new("FileNotFound", "")),
        };
        assert!(is_not_found(&f));
    }
}
