//! # vbm-repo — the backup repository
//!
//! Where backups live for years: the chunk codec (zstd, optional AES-256-GCM), the
//! content-addressed chunk store, fixed indexes per disk, blobs for small files, `manifest.json`,
//! the catalog rebuilt from the repository alone, verify, retention and garbage collection,
//! locking, and the storage backends behind one trait. The on-disk format is described byte by
//! byte in `docs/file-formats.md`.
//!
//! It must not know about vSphere (no dependency on `vbm-vsphere`), about the service's database,
//! or about how data reaches it: callers hand it bytes and file metadata.
